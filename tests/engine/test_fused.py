"""Joined sibling projections: bit-identical to the siblings packed one by one, whole models
included, and correct whatever order the parts are called in."""

from __future__ import annotations

import pytest
import torch

from prefixkv.engine.fused import JoinedProjection, ProjectionPart, join_siblings
from prefixkv.engine.linear import OneDNNLinear, PackedLinear
from prefixkv.models.family import LLAMA_SIBLINGS

from .tiny import tiny_llama

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN"
)


def pack_each(model: torch.nn.Module) -> None:
    """The oneDNN kernel without joining: every nn.Linear packed on its own."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, PackedLinear(child))


@pytest.mark.parametrize("rows", [1, 3, 16, 70, 600])
def test_a_joined_model_gives_the_same_logits_bit_for_bit(rows: int) -> None:
    joined, separate = tiny_llama(seed=4), tiny_llama(seed=4)
    OneDNNLinear().install(joined)
    pack_each(separate)
    attention = joined.model.layers[0].self_attn
    assert isinstance(attention.q_proj, ProjectionPart)
    assert isinstance(attention.joined_q_proj.joined, PackedLinear)
    assert isinstance(joined.model.layers[0].mlp.up_proj, ProjectionPart)
    ids = torch.randint(0, joined.config.vocab_size, (1, rows), generator=torch.Generator())
    with torch.inference_mode():
        assert torch.equal(joined(input_ids=ids).logits, separate(input_ids=ids).logits)


def siblings(bias: bool = False) -> list[torch.nn.Linear]:
    torch.manual_seed(1)
    return [torch.nn.Linear(12, width, bias=bias) for width in (8, 4, 4)]


class Counted(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.inner(x)
        return out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 1, 0, 2)])
def test_parts_return_their_siblings_products_in_any_order(
    bias: bool, order: tuple[int, ...]
) -> None:
    layers = siblings(bias)
    owner = JoinedProjection(layers)
    counted = Counted(owner.joined)
    owner.joined = counted  # type: ignore[assignment]
    parts = [ProjectionPart(owner, i) for i in range(3)]
    x = torch.randn(5, 12)
    with torch.no_grad():
        for i in order:
            torch.testing.assert_close(parts[i](x), layers[i](x), rtol=1e-6, atol=1e-6)
    # One product for a call of each part; a part called again starts another.
    assert counted.calls == (1 if len(order) == 3 else 2)


def test_a_part_given_another_input_computes_afresh() -> None:
    layers = siblings()
    owner = JoinedProjection(layers)
    q, k = ProjectionPart(owner, 0), ProjectionPart(owner, 1)
    first, second = torch.randn(2, 12), torch.randn(2, 12)
    with torch.no_grad():
        q(first)
        torch.testing.assert_close(k(second), layers[1](second), rtol=1e-6, atol=1e-6)


def test_only_matching_siblings_are_joined() -> None:
    model = torch.nn.Module()
    model.attn = torch.nn.Module()
    model.attn.q_proj, model.attn.k_proj, model.attn.v_proj = siblings()
    model.mlp = torch.nn.Module()
    model.mlp.gate_proj = torch.nn.Linear(12, 6, bias=False)
    model.mlp.up_proj = torch.nn.Linear(12, 6, bias=True)  # a bias the gate lacks: left alone
    assert join_siblings(model, LLAMA_SIBLINGS) == 1
    assert isinstance(model.attn.q_proj, ProjectionPart)
    assert type(model.mlp.gate_proj) is torch.nn.Linear
    names = {name for name, _ in model.named_parameters()}
    assert names == {
        "attn.joined_q_proj.joined.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.up_proj.bias",
    }
