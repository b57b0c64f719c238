"""Benchmarks, run as scripts from the repository root (see perf/common.py)."""
