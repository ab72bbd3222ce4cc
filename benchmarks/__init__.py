"""Benchmarks that print tables (`python -m benchmarks.speed --help`, ...); results in RESULTS.md."""
