"""Lower cache tiers below the RAM pool: a local disk tier and a Redis tier, needing the
``[tiers]`` extra (xxhash, redis, cryptography).

- :mod:`.naming`: 128-bit chained block names, stable across processes and machines (keyed
  with a tier key)
- :mod:`.record`: a block as self-describing bytes, verified on every load
- :mod:`.seal`: records sealed with a tier key (AES-256-GCM), or checksummed without one
- :mod:`.key`: tier keys and key files; :mod:`.policy`: shared stores need one
- :mod:`.codec`: block payloads (exact by default; lossy codecs in :mod:`.quantize`)
- :mod:`.protocol`: :class:`Tier`, what a store of records does
- :mod:`.promote`: reading blocks back into RAM, bounded by its room and a deadline
"""

from prefixkv.extras import require

require("tiers", "prefixkv.tiers")
