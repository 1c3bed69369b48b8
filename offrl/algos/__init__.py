"""Algorithms: each update reads top to bottom in its own file."""
