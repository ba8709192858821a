"""Benchmarks against the tools a user would pick instead (run as `python -m bench.<name>`)."""
