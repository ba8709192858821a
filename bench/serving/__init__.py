"""Serving benchmark (GitHub issue #3): flywheel's REST server against the servers a user
would pick instead, one server process pinned to core 0, the load generator on core 1.

Run: ``.venv/bin/python -m bench.serving [--quick] [--duration S]`` (see bench/README.md).
"""
