"""prefixkv inside the inference engines people already run; each integration is imported
only by that engine's environment, and importing this package imports neither engine.

- :mod:`.sglang`: a radix-cache backend for SGLang 0.5.x (``--radix-cache-backend prefixkv``)
  over :class:`~prefixkv.index.PrefixIndex`. Importing it imports SGLang; nothing else in
  prefixkv does. :mod:`.sglang_pages`: the page bookkeeping it needs that does not touch
  SGLang.
- :mod:`.vllm`: a vLLM v1 KV connector over prefixkv's disk and Redis tiers (README,
  "vLLM"); only its ``connector`` module imports vLLM.
"""
