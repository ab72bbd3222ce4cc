"""Benchmarks that print tables (`python -m benchmarks.speed --help`, ...): RESULTS.md."""
