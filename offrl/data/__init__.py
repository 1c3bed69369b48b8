"""Datasets: on-disk format, registry, collection, buffers, importers and exporters."""
