"""The door (prefixkv.kernels.ops.Kernels): every function refuses a wrong dtype, device,
layout, rank, stride, shape or bound with a TypeError or ValueError naming the argument,
never a crash and never a write; the library refuses an argument block of another size or
version; and the checks hold under ``python -O``.

Each case starts from a valid call (which must succeed) and breaks one thing."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prefixkv.kernels import abi
from prefixkv.kernels.formats import pack_f32
from prefixkv.kernels.items import AttendItems
from prefixkv.kernels.ops import Kernels
from tests.kernels.loaded import loaded

Call = dict[str, Any]
KV_HEADS, GROUPS, DIM, POOL, ROWS = 2, 3, 8, 32, 4


def linear_call() -> Call:
    return {"x": torch.randn(3, 20), "weight": pack_f32(torch.randn(70, 20)),
            "bias": torch.randn(70)}  # fmt: skip


def rms_norm_call() -> Call:
    return {"x": torch.randn(2, 3, 24), "weight": torch.randn(24), "eps": 1e-5}


def silu_mul_call() -> Call:
    return {"gate_up": torch.randn(3, 2, 26), "width": 13}


def rotary_call() -> Call:
    return {"x": torch.randn(3, 40), "cos": torch.randn(3, 8), "sin": torch.randn(3, 8),
            "heads": 4}  # fmt: skip


def store_call() -> Call:
    return {
        "keys": torch.randn(KV_HEADS, POOL, DIM),
        "values": torch.randn(KV_HEADS, POOL, DIM),
        "new_keys": torch.randn(KV_HEADS, ROWS, DIM),
        "new_values": torch.randn(ROWS, KV_HEADS, DIM).transpose(0, 1),  # as transformers
        "slots": torch.tensor([3, 0, 31, 7]),
    }


def items(rows: list[int], slots: list[int]) -> AttendItems:
    """One item: members ``rows``, each seeing every token ``slots``."""
    return AttendItems([0, len(rows)], rows, [len(slots)] * len(rows), [0] * len(rows),
                       [0, len(slots)], slots, [-1] * len(slots))  # fmt: skip


def attend_call() -> Call:
    return {
        "items": items([0, 2, 3], [5, 0, 31, 9]),
        "query": torch.randn(KV_HEADS * GROUPS, ROWS, DIM),
        "keys": torch.randn(KV_HEADS, POOL, DIM),
        "values": torch.randn(KV_HEADS, POOL, DIM),
        "out": torch.zeros(ROWS, KV_HEADS * GROUPS, DIM),
        "scale": DIM**-0.5,
        "softcap": math.inf,
    }


CALLS: dict[str, Callable[[], Call]] = {
    "linear": linear_call,
    "rms_norm": rms_norm_call,
    "silu_mul": silu_mul_call,
    "rotary": rotary_call,
    "store": store_call,
    "attend": attend_call,
}


def strided(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a tensor of its shape that is not contiguous (every other float)."""
    wider = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2]
    return wider.copy_(t)


# Breaks that apply to any tensor argument: (name, break, error, words in the message).
TENSOR_BREAKS: list[tuple[str, Callable[[torch.Tensor], Any], type[Exception], str]] = [
    ("float64", lambda t: t.double(), TypeError, "float64"),
    ("bfloat16", lambda t: t.bfloat16(), TypeError, "bfloat16"),
    ("float16", lambda t: t.half(), TypeError, "float16"),
    ("meta", lambda t: t.to("meta"), TypeError, "meta"),
    ("sparse", lambda t: t.to_sparse(), TypeError, "sparse"),
    ("numpy", lambda t: t.numpy(), TypeError, "ndarray"),
    ("rank", lambda t: t[None], ValueError, "dimensions"),
]
TENSOR_ARGS = [
    (door, arg)
    for door, make in CALLS.items()
    for arg, value in make().items()
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32
]
ANY_RANK = {("rms_norm", "x"), ("silu_mul", "gate_up")}  # [..., dim]: the shape cases below
TENSOR_CASES = [
    pytest.param(door, arg, breaking, error, words, id=f"{door}-{arg}-{what}")
    for door, arg in TENSOR_ARGS
    for what, breaking, error, words in TENSOR_BREAKS
    if not (what == "rank" and (door, arg) in ANY_RANK)
]


def call(kernels: Kernels, door: str, args: Call) -> Any:
    return getattr(kernels, door)(**args)


@pytest.mark.parametrize("door", CALLS)
def test_each_valid_call_runs(door: str) -> None:
    call(loaded(), door, CALLS[door]())


@pytest.mark.parametrize(("door", "arg", "breaking", "error", "words"), TENSOR_CASES)
def test_a_wrong_tensor_is_refused_by_name(
    door: str, arg: str, breaking: Any, error: type[Exception], words: str
) -> None:
    args = CALLS[door]()
    args[arg] = breaking(args[arg])
    written = [t.clone() for t in args.values() if isinstance(t, torch.Tensor) and t.is_cpu
               and t.layout == torch.strided]  # fmt: skip
    with pytest.raises(error, match=f"^{arg}: .*{words}"):
        call(loaded(), door, args)
    after = [t for t in args.values() if isinstance(t, torch.Tensor) and t.is_cpu
             and t.layout == torch.strided]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(written, after, strict=True))  # no write


def test_every_door_and_break_is_covered() -> None:
    assert {door for door, _ in TENSOR_ARGS} == set(CALLS)
    assert (
        len(TENSOR_ARGS) == 2 + 2 + 1 + 3 + 4 + 4
    )  # linear (its weight: SHAPE_BREAKS), rms_norm, silu_mul, rotary, store, attend


# Shape, stride and bound breaks, one door each: (door, change, error, message pattern).
def _set(**changes: Any) -> Callable[[Call], None]:
    return lambda args: args.update(changes)


def _weight(**changes: Any) -> Callable[[Call], None]:
    return lambda args: args.update(weight=dataclasses.replace(args["weight"], **changes))


def _weight_data(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Call], None]:
    return lambda args: args.update(
        weight=dataclasses.replace(args["weight"], data=change(args["weight"].data))
    )


def _apply(arg: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Call], None]:
    return lambda args: args.update({arg: change(args[arg])})


SHAPE_BREAKS: list[tuple[str, str, Callable[[Call], None], type[Exception], str]] = [
    ("linear", "x features", _apply("x", lambda t: t[:, :19].contiguous()), ValueError, "^x: 19 features, the weight takes 20"),
    ("linear", "out features", _weight(out_features=200), ValueError, "^weight.data: shape \\(2, 5120\\) does not hold 200 x 20"),
    ("linear", "no out features", _weight(out_features=0), ValueError, "^weight: 0 x 20"),
    ("linear", "bias length", _apply("bias", lambda t: t[:69]), ValueError, "^bias: 69 values"),
    ("linear", "x strided", _apply("x", strided), ValueError, "^x: a contiguous"),
    ("linear", "data strided", _weight_data(strided), ValueError, "^weight.data: a contiguous"),
    ("linear", "data float32", _weight_data(lambda t: t.float()), TypeError, "^weight.data: .*uint8 CPU tensor, not torch.float32"),
    ("linear", "data meta", _weight_data(lambda t: t.to("meta")), TypeError, "^weight.data: .*meta"),
    ("linear", "data rank", _weight_data(lambda t: t[None]), ValueError, "^weight.data: shape \\(1, 2, 5120\\)"),
    ("linear", "format", _weight(format="q5_0"), ValueError, "^weight: format one of .*'q5_0'"),
    ("linear", "format of other bytes", _weight(format="bf16"), ValueError, "^weight.data: shape \\(2, 5120\\) .* \\(expected \\(2, 2560\\)\\)"),
    ("linear", "quantized k", _weight(format="q8_0"), ValueError, "^weight: q8_0: in_features 20 is not a multiple of 32"),
    ("linear", "not packed", _apply("weight", lambda w: w.data), TypeError, "^weight: a PackedWeight expected, not Tensor"),
    ("rms_norm", "x last dim", _apply("x", lambda t: t[..., :23].contiguous()), ValueError, "^x: .*weight's 24"),
    ("rms_norm", "x scalar", _set(x=torch.tensor(1.0)), ValueError, "^x: shape \\(\\)"),
    ("rms_norm", "weight empty", _set(weight=torch.zeros(0), x=torch.zeros(2, 0)), ValueError, "^x: "),
    ("rms_norm", "x strided", _apply("x", strided), ValueError, "^x: a contiguous"),
    ("silu_mul", "width", _set(width=12), ValueError, "^gate_up: .*2 \\* width = 24"),
    ("silu_mul", "no width", _set(width=0), ValueError, "^gate_up: "),
    ("silu_mul", "odd", _apply("gate_up", lambda t: t[..., :25].contiguous()), ValueError, "^gate_up: "),
    ("silu_mul", "strided", _apply("gate_up", strided), ValueError, "^gate_up: a contiguous"),
    ("rotary", "x strided", _apply("x", strided), ValueError, "^x: a contiguous"),
    ("rotary", "cos strided", _apply("cos", strided), ValueError, "^cos: a contiguous"),
    ("rotary", "odd dim", _set(cos=torch.zeros(3, 7), sin=torch.zeros(3, 7)), ValueError, "^cos, sin: .*even head dim"),
    ("rotary", "sin shape", _apply("sin", lambda t: t[:, :6].contiguous()), ValueError, "^cos, sin: shapes \\(3, 8\\), \\(3, 6\\)"),
    ("rotary", "x rows", _apply("x", lambda t: t[:2].contiguous()), ValueError, "^x: 2 rows and heads=4; cos has 3 rows"),
    ("rotary", "no heads", _set(heads=0), ValueError, "^x: .*heads=0"),
    ("rotary", "heads not int", _set(heads=2.0), TypeError, "^heads: an int expected, not float"),
    ("rotary", "too many heads", _set(heads=6), ValueError, "^x: 40 columns hold fewer than 6 heads of 8"),
    ("store", "slot past the pool", _set(slots=torch.tensor([3, 0, 32, 7])), ValueError, "^slots: .*outside the pool's 0..31"),
    ("store", "negative slot", _set(slots=torch.tensor([3, -1, 2, 7])), ValueError, "^slots: .*outside"),
    ("store", "slots float", _set(slots=torch.tensor([3.0, 0, 2, 7])), TypeError, "^slots: .*int64"),
    ("store", "slots meta", _apply("slots", lambda t: t.to("meta")), TypeError, "^slots: .*meta"),
    ("store", "slots count", _set(slots=torch.tensor([3, 0, 2])), ValueError, "^slots: .*\\[4\\]"),
    ("store", "slots strided", _set(slots=torch.arange(8)[::2]), ValueError, "^slots: .*contiguous"),
    ("store", "keys rows strided", _apply("keys", strided), ValueError, "^keys: "),
    ("store", "values shape", _apply("values", lambda t: t[:, :16].contiguous()), ValueError, "^values: "),
    ("store", "values strides", _apply("values", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)), ValueError, "^values: "),
    ("store", "new kv heads", _apply("new_keys", lambda t: t[:1]), ValueError, "^new_keys: "),
    ("store", "new dim strided", _apply("new_keys", strided), ValueError, "^new_keys: "),
    ("store", "new tokens", _apply("new_values", lambda t: t[:, :3]), ValueError, "^new_values: shape \\(2, 3, 8\\), .* for 4 tokens"),
    ("store", "no kv heads", _set(keys=torch.zeros(0, POOL, DIM), values=torch.zeros(0, POOL, DIM)), ValueError, "^keys: 0 kv heads"),
    ("attend", "row past the query", _set(items=items([0, 4], [1])), ValueError, "query row 4 .* 4 rows"),
    ("attend", "slot past the pool", _set(items=items([0], [1, 32])), ValueError, "pool slot 32;.* the pool 32 slots"),
    ("attend", "more lanes", _set(items=items([0, 1, 2, 3, 0, 1], [1])), ValueError, "^query: 6 heads .* 6 members \\(16 lanes\\)"),
    ("attend", "heads over kv heads", _apply("query", lambda t: t[:5]), ValueError, "^query: 5 heads"),
    ("attend", "query dim", _apply("query", lambda t: t[..., :7].contiguous()), ValueError, "^query: "),
    ("attend", "query dim strided", _apply("query", strided), ValueError, "^query: "),
    ("attend", "out shape", _apply("out", lambda t: t[:3]), ValueError, "^out: "),
    ("attend", "out strided", _apply("out", strided), ValueError, "^out: "),
    ("attend", "keys rows strided", _apply("keys", strided), ValueError, "^keys: "),
    ("attend", "values shape", _apply("values", lambda t: t[:, :16].contiguous()), ValueError, "^values: "),
    ("attend", "scale", _set(scale=None), TypeError, "^scale, softcap: numbers expected, not None"),
    ("attend", "softcap", _set(softcap=None), TypeError, "^scale, softcap: numbers expected"),
    ("attend", "softcap zero", _set(softcap=0.0), ValueError, "^softcap: a positive number"),
    ("rms_norm", "eps", _set(eps="1e-5"), TypeError, "^eps: a number expected, not str"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("door", "change", "error", "pattern"),
    [pytest.param(door, change, error, pattern, id=f"{door}-{what}")
     for door, what, change, error, pattern in SHAPE_BREAKS],
)  # fmt: skip
def test_a_wrong_shape_stride_or_bound_is_refused_by_name(
    door: str, change: Callable[[Call], None], error: type[Exception], pattern: str
) -> None:
    args = CALLS[door]()
    change(args)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.is_cpu}
    with pytest.raises(error, match=pattern):
        call(loaded(), door, args)
    for name, value in before.items():
        assert torch.equal(args[name], value), f"{name} was written"


def test_an_empty_plan_attends_nothing() -> None:
    args = attend_call()
    args["items"] = AttendItems([0], [], [], [], [0], [], [])
    args["query"] = torch.zeros(0)  # not even looked at: nothing to attend
    call(loaded(), "attend", args)
    assert not args["out"].any()


@pytest.mark.parametrize(("field", "status"), [("ATTEND_ARGS_SIZE", "size"),
                                               ("ABI_VERSION", "version")])  # fmt: skip
def test_the_library_refuses_an_argument_block_of_another_size_or_version(
    field: str, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The door as a caller out of step with the library would be: the block it fills
    claims another size (or version), and the library reads no further than that claim."""
    kernels, args = loaded(), attend_call()
    monkeypatch.setattr(abi, field, getattr(abi, field) + 8)
    with pytest.raises(RuntimeError, match=f"refused the call .*another {status}"):
        call(kernels, "attend", args)
    assert not args["out"].any()
    monkeypatch.undo()
    call(kernels, "attend", args)
    assert args["out"].any()


def test_a_library_of_another_abi_is_not_spoken_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefixkv.kernels import build

    library = build.load()
    monkeypatch.setattr(abi, "ATTEND_ARGS_SIZE", abi.ATTEND_ARGS_SIZE - 4)
    with pytest.raises(RuntimeError, match=r"a 1\d\d-byte attention block; this prefixkv"):
        Kernels(library)


def test_items_arrays_are_read_only_copies() -> None:
    slots = np.array([5, 0, 31, 9])
    checked = items([0, 2, 3], slots.tolist())
    source = np.array([5, 0, 31, 9], dtype=np.int64)
    again = AttendItems([0, 1], [0], [4], [0], [0, 4], source, [-1] * 4)
    source[0] = 10**9  # the caller's array changes after the check: the items do not
    assert again.slot.tolist() == [5, 0, 31, 9] and again.pool_slots == 32
    for array in (checked.slot, checked.rows, checked.owner, checked.member_start):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 10**6


@pytest.mark.process
def test_the_checks_hold_under_python_dash_o(tmp_path: Path) -> None:
    """``python -O`` drops asserts: the door must refuse bad input there too."""
    script = tmp_path / "door.py"
    script.write_text(
        "import sys, torch\n"
        "from prefixkv.kernels.ops import load\n"
        "assert False, 'asserts are on'\n"
        "k = load()\n"
        "for bad in (lambda: k.rms_norm(torch.zeros(2, 8, dtype=torch.bfloat16), torch.ones(8), 1e-5),\n"
        "            lambda: k.silu_mul(torch.zeros(2, 8), 3)):\n"
        "    try:\n"
        "        bad()\n"
        "    except (TypeError, ValueError) as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "print('optimize', sys.flags.optimize)\n"
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-O", str(script)], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("TypeError x: the native kernels take a float32 CPU tensor, not")
    assert lines[1].startswith("ValueError gate_up: shape (2, 8) does not end in 2 * width = 6")
    assert lines[2] == "optimize 1"
