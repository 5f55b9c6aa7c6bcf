"""Benchmark scripts: each prints a table and writes CSV under benchmarks/results/."""
