"""Benchmarks (run as scripts, ``python benchmarks/bench_*.py``) and their shared helpers
(importable as ``benchmarks.*`` from the repository root, e.g. by the tests)."""
