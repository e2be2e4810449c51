"""Sibling projections of one input run as one GEMM: q/k/v of an attention block, gate/up of
a gated MLP.

transformers' Llama-style modules call ``q_proj``, ``k_proj`` and ``v_proj`` one after
another on the same hidden states (``gate_proj`` and ``up_proj`` likewise). Each call pays
its own dispatch and kernel start (every weight is read once either way); one call over the
three weights stacked pays it once (measured in ``docs/decisions.md``, "Linear layers").
:func:`join_siblings` stacks them into one linear layer owned by a :class:`JoinedProjection`
and puts a :class:`ProjectionPart` in each sibling's place. On oneDNN with packed weights
every output column of the joined product is bit-identical to the sibling's own (the same dot product over the same input, whatever the number of columns:
``tests/engine/test_fused.py`` checks the logits of whole models), so only the cost changes.

The parts' contract: the first part called with an input computes the joined product and
keeps it until each part has taken its columns for that same input object; a part called
with another input (or a second time) computes the product afresh. Any call order is
therefore correct, and the order transformers uses costs one GEMM. Not thread-safe: a model
runs one forward at a time (the engine's model lock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

Siblings = Sequence[Sequence[str]]
"""Sets of attribute names of projections that read one input, in output order: a model
family's :attr:`prefixkv.models.Family.siblings`."""


class JoinedProjection(torch.nn.Module):
    """The siblings' weights stacked by rows in ``joined`` (an ``nn.Linear`` until a kernel
    swaps it), and the column range each sibling owns in its output."""

    joined: torch.nn.Module
    """``[..., in_features] -> [..., sum(widths)]``: an ``nn.Linear`` until a kernel swaps it."""

    def __init__(self, siblings: Sequence[torch.nn.Linear]) -> None:
        super().__init__()
        first = siblings[0]
        biased = first.bias is not None
        self.in_features = first.in_features
        self.widths = tuple(s.out_features for s in siblings)
        joined = torch.nn.Linear(first.in_features, sum(self.widths), bias=False,
                                 device="meta", dtype=first.weight.dtype)  # fmt: skip
        with torch.no_grad():  # each on its siblings' device: a weight may be on meta
            # (its values still in a file: prefixkv.engine.gguf_load), its bias not
            joined.weight = torch.nn.Parameter(torch.cat([s.weight for s in siblings]))
            if biased:
                joined.bias = torch.nn.Parameter(torch.cat([s.bias for s in siblings]))
        self.joined = joined
        self.starts = tuple(sum(self.widths[:i]) for i in range(len(self.widths)))
        self._kept = _Kept()  # a plain object: nn.Module's __setattr__ costs ~6 us a call

    def columns(self, part: int, x: torch.Tensor) -> torch.Tensor:
        """Sibling ``part``'s output for ``x``: ``[..., widths[part]]``, a view of the joined
        product (computed here unless kept from this same input and not yet taken)."""
        kept = self._kept
        if x is not kept.input or part not in kept.untaken:
            kept.input, kept.output = x, self.joined(x)
            kept.untaken = set(range(len(self.widths)))
        output = kept.output
        assert output is not None
        kept.untaken.discard(part)
        if not kept.untaken:  # every part has its columns: drop the references
            kept.input = kept.output = None
        start = self.starts[part]
        return output[..., start : start + self.widths[part]]


class _Kept:
    """The joined product of the last input, until every part has taken its columns."""

    __slots__ = ("input", "output", "untaken")

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.untaken: set[int] = set()


class ProjectionPart(torch.nn.Module):
    """One sibling's place: its columns of the :class:`JoinedProjection` (held as a plain
    reference, so the joined weight is registered once, under its owner)."""

    def __init__(self, owner: JoinedProjection, part: int) -> None:
        super().__init__()
        self.__dict__["owner"] = owner  # not a submodule: the owner is registered elsewhere
        self.part = part
        self.out_features = owner.widths[part]
        self.in_features = owner.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner: JoinedProjection = self.__dict__["owner"]
        return owner.columns(self.part, x)

    def extra_repr(self) -> str:
        return f"part {self.part} of the joined projection, out_features={self.out_features}"


def join_siblings(model: torch.nn.Module, siblings: Siblings) -> int:
    """Replace every set of ``siblings`` (attribute names, e.g. its family's
    :attr:`~prefixkv.models.Family.siblings`) in ``model`` (all plain ``nn.Linear`` over one
    input size, with or without bias alike) by a :class:`JoinedProjection`, registered next to
    them as ``joined_<first name>``, and its parts. Returns how many sets were joined; leaves
    any other set as it is. Mutates ``model``."""
    return len(list(_joined_sets(model, siblings)))


def _joined_sets(
    model: torch.nn.Module, siblings: Siblings
) -> Iterator[tuple[JoinedProjection, list[torch.nn.Linear]]]:
    """Join each set of ``siblings`` in ``model`` as it is reached, yielding its owner and the
    layers it replaced (the caller drops them before the next set: one set's weights are
    held twice at a time, never the model's)."""
    for module in list(model.modules()):
        for names in siblings:
            layers = [getattr(module, name, None) for name in names]
            if not _joinable(layers):
                continue
            linears: list[torch.nn.Linear] = layers  # type: ignore[assignment]
            owner = JoinedProjection(linears)
            setattr(module, _owner_name(names), owner)
            for part, name in enumerate(names):
                setattr(module, name, ProjectionPart(owner, part))
            yield owner, linears


def joined_projection(module: torch.nn.Module, names: Sequence[str]) -> JoinedProjection | None:
    """The :class:`JoinedProjection` that :func:`join_siblings` registered on ``module`` for
    the sibling set ``names``, or None where it joined none."""
    owner = getattr(module, _owner_name(names), None)
    return owner if isinstance(owner, JoinedProjection) else None


def _owner_name(names: Sequence[str]) -> str:
    return f"joined_{names[0]}"


def _joinable(siblings: list[object]) -> bool:
    if not all(type(s) is torch.nn.Linear for s in siblings):
        return False
    linears: list[torch.nn.Linear] = siblings  # type: ignore[assignment]
    first = linears[0]
    return all(
        s.in_features == first.in_features
        and (s.bias is None) == (first.bias is None)
        and s.weight.dtype == first.weight.dtype
        and s.weight.device == first.weight.device
        for s in linears
    )


MakeLayer = Callable[[torch.nn.Linear, Sequence[torch.nn.Linear]], torch.nn.Module]
"""``make(layer, sources)``: the module that replaces ``layer``; ``sources`` are the layers
whose weight rows ``layer``'s weight holds, in order (a joined layer's siblings, else
``(layer,)``), so that a kernel can find each one's weights as the checkpoint stored them."""


def swap_linears(model: torch.nn.Module, siblings: Siblings, make: MakeLayer) -> int:
    """Join ``model``'s sibling projections (as :func:`join_siblings` does), then put
    ``make(layer, sources)`` in the place of every ``nn.Linear`` (joined ones included).
    Returns how many were replaced. Mutates ``model``; a linear kernel checks every layer
    before calling it."""
    swapped = 0
    for owner, linears in _joined_sets(model, siblings):
        joined = owner.joined
        assert isinstance(joined, torch.nn.Linear)  # just made
        owner.joined = make(joined, linears)
        swapped += 1
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, child_name, make(child, (child,)))
                swapped += 1
    return swapped
