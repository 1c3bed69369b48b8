"""Benchmark programs, run from the repository root: `python -m benchmarks.bench --help`."""
