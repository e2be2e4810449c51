"""Peer systems the benchmarks run beside prefixkv, one module each, all optional.

- :mod:`.sglang`: SGLang's classic RadixCache (index benchmark subject)
- :mod:`.vllm`: vLLM v1's block hashing + lookup (index benchmark subject)
- :mod:`.llamacpp`: llama.cpp's LlamaRAMCache (TTFT benchmark)
- :mod:`.stubs`: the import placeholders that let SGLang and vLLM load on a CPU-only machine
"""
