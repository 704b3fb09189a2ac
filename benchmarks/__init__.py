"""Benchmark scripts (`python benchmarks/<name>.py`) and what they share."""
