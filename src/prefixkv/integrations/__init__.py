"""prefixkv inside other inference engines.

- :mod:`.sglang`: a radix-cache backend for SGLang 0.5.x (``--radix-cache-backend prefixkv``)
  over :class:`~prefixkv.index.PrefixIndex`. Importing it imports SGLang; nothing else in
  prefixkv does.
- :mod:`.sglang_pages`: the page bookkeeping it needs that does not touch SGLang.
"""
