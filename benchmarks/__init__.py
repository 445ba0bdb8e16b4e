"""Benchmarks run by ``make bench`` (``python -m benchmarks.run``); each writes benchmarks/results/<name>.json."""
