"""Hugging Face inference engine: model loading, prefix-cached generation (the [hf] extra)."""

from prefixkv.extras import require

require("hf", "prefixkv.engine")
