"""Benchmarks: workloads and runners behind ``prefixkv bench``."""
