#!/usr/bin/env bash
# Install the peer systems that src/prefixkv/bench/peers/ drives (SGLang's RadixCache in
# sglang.py, vLLM's prefix-caching block hashing in vllm.py), CPU only, into the active
# environment.
#
# Run after prefixkv itself is installed with its dev extras (pip install -e
# '.[dev]' -c constraints.txt) and torch==2.13.0 (CPU): what those bring is part
# of both peers' import chains (transformers, numpy, pydantic, fastapi,
# prometheus_client, openai, pillow via matplotlib, psutil via accelerate,
# requests via gguf, ...):
#     . .venv/bin/activate && bash benchmarks/install_peers.sh
#
# Both peers are installed with --no-deps: their declared dependencies pin other
# torch versions and pull CUDA kernels. Of what their import chains import and
# prefixkv does not already bring, only these can't be replaced by the
# placeholders of src/prefixkv/bench/peers/stubs.py and are installed for real:
#   msgspec      - SGLang and vLLM subclass msgspec.Struct at import time
#   dill         - SGLang serialises a logits-processor class at import time
#   cachetools   - vLLM subclasses cachetools.LRUCache at import time
#   oss-harmony  - vLLM uses openai_harmony types in pydantic models
#   cbor2        - vLLM's "sha256_cbor"/"xxhash_cbor" block-hash functions
#   xxhash       - vLLM's "xxhash" block-hash function
# The rest (triton, torchvision, aiohttp, xgrammar, zmq, ...) are imported but
# never called on these paths; stubs.py swaps in placeholders while importing.
set -euo pipefail

PYTHON="${PYTHON:-python}"

"$PYTHON" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("install_peers.sh: torch is not installed; install torch==2.13.0 (CPU) first")
if torch.__version__.split("+")[0] != "2.13.0":
    sys.exit(f"install_peers.sh: found torch {torch.__version__}; the peers are set up for torch==2.13.0 (CPU)")
EOF

"$PYTHON" -m pip install --no-deps \
    sglang==0.5.23 \
    vllm==0.33.0 \
    msgspec==0.22.0 \
    dill==0.4.1 \
    cachetools==8.0.1 \
    oss-harmony==0.0.11 \
    cbor2==6.3.0 \
    xxhash==4.1.0

# Smoke test: construct both peers and run one insert and match each (prints the reason if
# one is unavailable); benchmarks/peers_check.py checks them thoroughly.
cd "$(dirname "$0")"
"$PYTHON" - <<'EOF'
import sys
from prefixkv.bench.peers.sglang import SGLangRadix
from prefixkv.bench.peers.stubs import PeerUnavailable
from prefixkv.bench.peers.vllm import VLLMHashing

status = 0
for make in (lambda: SGLangRadix(page_size=16), lambda: VLLMHashing(16, "sha256")):
    try:
        peer = make()
        tokens = list(range(64))
        peer.insert(tokens)
        assert peer.match(tokens) == 64
        print(f"{peer.name}: ok (version {peer.version})")
    except PeerUnavailable as exc:
        print(f"unavailable: {exc}")
        status = 1
sys.exit(status)
EOF
