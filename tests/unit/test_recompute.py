"""``recomputed``: a compiled step rebuilds the tensors in the backward instead of keeping
them, with the same values and gradients; XLNet's flex path keeps no position table."""

from __future__ import annotations

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.models.common.recompute import recomputed
from pretrain.models.xlnet import XLNetConfig, XLNetLM
from pretrain.objectives.plm import PermutationLM
from pretrain.train.activation_memory import saved_for_backward


def product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w


def test_values_and_gradients_are_those_of_the_function():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    w = torch.randn(5, 7, generator=g, requires_grad=True)
    direct = torch.sin(product(x, w))
    direct.sum().backward()
    expected = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    again = torch.sin(recomputed(product, x, w))
    again.sum().backward()
    torch.testing.assert_close(again, direct)
    torch.testing.assert_close((x.grad, w.grad), expected)


def test_compiled_step_keeps_the_inputs_not_the_product():
    x = torch.randn(64, 8, requires_grad=True)
    w = torch.randn(8, 64, requires_grad=True)

    def kept(x, w):  # sin's backward reads the (64, 64) product
        return torch.sin(product(x, w))

    def rebuilt(x, w):
        return torch.sin(recomputed(product, x, w))

    def products(fn):
        return [t for t in saved_for_backward(fn, x, w) if t.op == "aten.mm.default"]

    assert [t.shape for t in products(kept)] == [(64, 64)]
    assert products(rebuilt) == []


@pytest.mark.parametrize("recompute", [True, False])
def test_xlnet_flex_path_keeps_no_position_table(recompute, monkeypatch, flex_backward_on_cpu):
    """(B, H, M, 2T) tables: FlexAttention reads them as captured buffers; compiled, they are
    rebuilt in the backward. Without ``recomputed`` they are kept (the test can see them).
    The backward is only traced, never run."""
    import pretrain.models.xlnet.model as xlnet_model

    if not recompute:
        monkeypatch.setattr(xlnet_model, "recomputed", lambda fn, *args: fn(*args))
    torch.manual_seed(0)
    B, T, H = 2, 32, 4
    cfg = XLNetConfig(100, d_model=32, n_layers=2, n_heads=H, attention_backend="flex")
    model = XLNetLM(cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 100, (B, T + 1), generator=g)
    zeros = torch.zeros_like(tokens)
    tb = TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))
    batch = PermutationLM([0, 1], mask_id=2)(tb, g)
    saved = saved_for_backward(model, batch)
    tables = [t for t in saved if t.shape[-1] == 2 * T and t.shape[:2] == (B, H)]
    # two query-stream layers and one content-stream layer (the last needs only k, v)
    assert len(tables) == (0 if recompute else 3)
