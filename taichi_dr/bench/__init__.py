"""Benchmark implementations shared by ``benchmarks/*.py`` and ``taichi-dr bench``."""
