"""Benchmarks that print tables: `python -m benchmarks.memory`, `.speed`, `.inversion`; gpu.sh."""
