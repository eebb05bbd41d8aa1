"""Benchmarks (never run by the test suite except as a smoke run); see bench/README.md."""
