"""Peer systems the benchmarks run beside prefixkv, each in its own module, all optional."""
