"""Run by `make check-core` in a venv holding prefixkv WITHOUT extras (numpy + torch only):
the index and the cache work, torch loads only with the cache, and each layer above says in
one line which extra it needs. Exits non-zero on the first broken promise."""

from __future__ import annotations

import subprocess
import sys

import prefixkv
from prefixkv import PrefixIndex

assert "torch" not in sys.modules, "import prefixkv loaded torch"
index = PrefixIndex(4)
index.insert([1, 2, 3, 4, 5], ["b0"])
assert index.match([1, 2, 3, 4, 9]).values == ("b0",)

import torch  # noqa: E402

from prefixkv import KVLayout, PrefixKVCache  # noqa: E402

cache = PrefixKVCache(KVLayout(1, 1, 2), 4, 1 << 16)
assert cache.store([1, 2, 3, 4], [(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))]) == 1
with cache.lookup([1, 2, 3, 4, 5]) as lease:
    assert lease.num_tokens == 4
cache.check_invariants()

try:
    prefixkv.Engine  # noqa: B018
except ImportError as exc:
    assert "pip install 'prefixkv[hf]'" in str(exc), exc
else:
    raise AssertionError("prefixkv.Engine imported without the [hf] extra")

try:
    import prefixkv.tiers
except ImportError as exc:
    assert "pip install 'prefixkv[tiers]'" in str(exc), exc
else:
    raise AssertionError("prefixkv.tiers imported without the [tiers] extra")

try:
    import prefixkv.integrations.sglang
except ImportError as exc:
    assert "pip install --no-deps sglang==" in str(exc) and "\n" not in str(exc), exc
else:
    raise AssertionError("prefixkv.integrations.sglang imported without SGLang installed")

for command, extra in ((["serve"], "server"), (["chat"], "hf"), (["bench", "ttft"], "hf")):
    done = subprocess.run(
        [sys.executable, "-m", "prefixkv.cli", *command], capture_output=True, text=True
    )
    line = f"pip install 'prefixkv[{extra}]'"
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and line in done.stderr, done
print("core-only install: index, cache and one-line extra messages OK")
