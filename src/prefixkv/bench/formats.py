"""``prefixkv bench formats``: how far each weight format's greedy replies stay from the fp32
path's, on a real model (SmolLM2 by default) and the prompts of the exactness suite.

Subjects, each an engine over the same model: ``fp32`` (the reference: the file's weights
de-quantized to float32, ``--weights fp32``), ``auto`` (the file's own blocks, packed as they
are), ``bf16`` (``--weights bf16``), and for each of ``q8_0``, ``q4_0``, ``q4_1``, ``q4_k_m``,
``q5_k_m`` asked for, the file written again in that format (:mod:`prefixkv.bench.requantize`,
from the file's values) and served ``auto``; such a file is also served ``fp32``, its
own fp32 path, which the packed blocks must match exactly. Per subject, on every prompt of the suite
(:func:`prefixkv.bench.compression.exactness_suite`: 22 chat, RAG, batch and multi-turn
prompts), ``--tokens`` greedy tokens: the share of prompts whose reply is identical to the
fp32 path's, the mean position of the first differing token, and the teacher-forced top-1
agreement (the fp32 path's reply fed to the subject in one pass: how often its argmax picks
the same next token). ``--activations q8`` runs every subject but the reference on 8-bit
activations (:mod:`prefixkv.engine.activations`). Also what each subject streams per decode step (MB, formats).

The K mixes are not in the default subjects for SmolLM2: its rows hold 576 values, not a
multiple of 256, so llama.cpp's rule (and ours) stores every matrix in the mix's fallback
(Q5_0, Q5_1, Q8_0), which prefixkv de-quantizes to bf16: no K-quant would be measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from prefixkv.bench.compression import exactness_suite, first_divergence, forced_logits
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.results_page import command_of
from prefixkv.engine.engine import Engine
from prefixkv.engine.linear import formats_of, streamed_bytes
from prefixkv.engine.loader import resolve_model
from prefixkv.engine.prompts import Prompt
from prefixkv.tokens import tokens_from_bytes

FILE_FORMATS = ("q8_0", "q4_0", "q4_1", "q4_k_m", "q5_k_m")
DEFAULT_SUBJECTS = ("auto", "bf16", "q8_0", "q4_0", "q4_1")
SUBJECTS = ("auto", "bf16", *FILE_FORMATS)


def _source(model: str, subject: str, workdir: Path) -> tuple[str, str]:
    """The model file ``subject`` (module docstring) is served from, and its ``--weights``."""
    if subject in ("fp32", "auto", "bf16"):
        return model, subject
    from prefixkv.bench.requantize import requantize

    path = requantize(resolve_model(model), workdir / f"model-{subject}.gguf", subject)
    return str(path), "auto"


def _engine(source: str, weights: str, activations: str = "fp32") -> Engine:
    return Engine.from_pretrained(source, cache_bytes=1 << 28, weights=weights,
                                  activations=activations)  # fmt: skip


def _replies(engine: Engine, suite: list[tuple[str, Prompt]], tokens: int) -> list[list[int]]:
    return [list(engine.generate(p, max_tokens=tokens).token_ids) for _, p in suite]


def _top1(engine: Engine, suite: list[tuple[str, Prompt]], replies: list[list[int]]) -> float:
    """Share of the reference replies' tokens ``engine`` predicts as its argmax, fed the
    reference's prompt and reply so far (teacher forcing)."""
    agree = total = 0
    layout = engine.layout
    empty = torch.empty(layout.num_layers, 2, layout.num_kv_heads, 0, layout.head_dim)
    for (_, prompt), reply in zip(suite, replies, strict=True):
        ids = tokens_from_bytes(engine.tokenize(prompt))
        logits = forced_logits(engine, empty, 0, ids, reply)
        agree += int((logits.argmax(-1) == torch.tensor(reply)).sum())
        total += len(reply)
    return agree / total if total else 1.0


def _row(subject: str, engine: Engine, replies: list[list[int]], reference: list[list[int]],
         top1: float, seconds: float) -> dict[str, Any]:  # fmt: skip
    firsts = [first_divergence(a, b) for a, b in zip(replies, reference, strict=True)]
    differ = [f for f in firsts if f is not None]
    return {
        "subject": subject,
        "formats": formats_of(engine.model),
        "streamed_mb": round(streamed_bytes(engine.model) / 1e6, 1),
        "prompts": len(replies),
        "identical": len(replies) - len(differ),
        "identical_rate": round((len(replies) - len(differ)) / len(replies), 4),
        "mean_first_divergence": round(sum(differ) / len(differ), 1) if differ else None,
        "top1_agreement": round(top1, 4),
        "seconds": round(seconds, 1),
    }


def line(row: dict[str, Any]) -> str:
    first = row["mean_first_divergence"]
    own = row.get("identical_to_own_fp32")
    return (
        f"formats {row['subject']:<7} greedy identical {row['identical']:>2}/{row['prompts']} "
        f"({100 * row['identical_rate']:5.1f}%)  first difference at token "
        f"{'-' if first is None else first}  teacher-forced top-1 "
        f"{100 * row['top1_agreement']:6.2f}%  streams {row['streamed_mb']} MB a step "
        f"({row['formats']})"
        + ("" if own is None else f"  identical to its own file's fp32 path {own}/{row['prompts']}")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prefixkv bench formats", description=__doc__)
    p.add_argument("--model", default="smollm2", help="a GGUF file (or smollm2)")
    p.add_argument("--subjects", default=",".join(DEFAULT_SUBJECTS),
                   help=f"compared with fp32, of {', '.join(SUBJECTS)}")  # fmt: skip
    p.add_argument("--activations", default="fp32", choices=("fp32", "q8"),
                   help="what every subject but the fp32 reference multiplies its weights "
                   "with (q8: integer dot products; subjects then named SUBJECT/q8)")  # fmt: skip
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--out", type=Path, default=Path("results/formats.json"))
    args = p.parse_args(argv)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        p.error(f"--subjects: unknown {unknown}; known: {', '.join(SUBJECTS)}")
    info = machine_info()
    print(describe(info), flush=True)
    reference_engine = _engine(args.model, "fp32")
    suite = exactness_suite(reference_engine)
    reference = _replies(reference_engine, suite, args.tokens)
    rows = [_row("fp32", reference_engine, reference, reference, 1.0, 0.0)]
    del reference_engine
    with tempfile.TemporaryDirectory(prefix="prefixkv-formats-") as work:
        for subject in subjects:
            start = time.perf_counter()
            source, weights = _source(args.model, subject, Path(work))
            engine = _engine(source, weights, args.activations)
            replies = _replies(engine, suite, args.tokens)
            top1 = _top1(engine, suite, reference)
            name = subject if args.activations == "fp32" else f"{subject}/{args.activations}"
            row = _row(name, engine, replies, reference, top1, time.perf_counter() - start)
            del engine
            if source != args.model:  # the packed blocks against their own file's fp32 path
                own = _replies(_engine(source, "fp32"), suite, args.tokens)
                row["identical_to_own_fp32"] = sum(
                    a == b for a, b in zip(replies, own, strict=True)
                )
            rows.append(row)
            print(line(rows[-1]), flush=True)
    record: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                              "rows": rows}  # fmt: skip
    record["command"] = command_of("formats", record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
