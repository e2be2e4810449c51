"""The index benchmark's rows as one markdown table (p50 per subject, ratio to prefixkv)."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("prefixkv", "prefixkv"),
    ("sglang(page=16)", "SGLang page 16"),
    ("sglang(page=1)", "SGLang page 1"),
    ("vllm(sha256)", "vLLM sha256"),
)


def markdown_table(rows: list[dict[str, Any]], machine: str) -> str:
    """A markdown document: the machine line, then one table row per benchmark row.

    Each peer cell is ``p50 (ratio)`` with ratio = peer p50 / prefixkv p50; a ratio below 1
    (the peer is faster) is bold. ``n/a`` where a subject did not run the case."""
    head = "| case | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [
        machine,
        "",
        "p50 in microseconds; (ratio) = peer p50 / prefixkv p50, bold when below 1.",
        "",
        head,
        rule,
    ]
    lines += [_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _row(row: dict[str, Any]) -> str:
    results = row["results"]
    base = results["prefixkv"]["p50_us"]
    cells = [_label(row["case"], row["size"])]
    for name, _ in COLUMNS:
        if name not in results:
            cells.append("n/a")
        elif name == "prefixkv":
            cells.append(_us(base))
        else:
            p50 = results[name]["p50_us"]
            ratio = f"{p50 / base:.2f}x"
            cells.append(f"{_us(p50)} ({f'**{ratio}**' if p50 < base else ratio})")
    return "| " + " | ".join(cells) + " |"


def _label(case: str, size: int) -> str:
    if case.startswith("conversation"):
        return f"{case.replace('[', ' [')} per turn, {_tokens(size)} tokens in all"
    if case == "evict_1_call":
        return f"one evict call, {_tokens(size)} leaves"
    return f"{case.replace('_', ' ').replace('[', ' [')} {_tokens(size)}"


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _us(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"
