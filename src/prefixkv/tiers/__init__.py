"""Lower cache tiers below the RAM pool: a local disk tier and a Redis tier, needing the
``[tiers]`` extra (xxhash, redis).

- :mod:`.naming`: 128-bit chained block names, stable across processes and machines
- :mod:`.record`: a block as self-describing bytes, verified on every load
- :mod:`.codec`: block payloads (exact by default; lossy codecs in :mod:`.quantize`)
- :mod:`.protocol`: :class:`Tier`, what a store of records does
"""

from prefixkv.extras import require

require("tiers", "prefixkv.tiers")
