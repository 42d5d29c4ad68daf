"""q, k, v rotated into head-major layout in one Function equal RoPE + split + transpose."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.common.heads_layout import rotary_heads
from pretrain.models.common.positions import apply_rotary, rope_cos_sin, rope_inv_freq

B, T, H, KV, HD = 2, 7, 4, 2, 8


def tables(per_example: bool, dtype=torch.float64):
    """RoPE tables shaped as ``RotaryEmbedding`` returns them: (1 or B, T, 1, hd)."""
    g = torch.Generator().manual_seed(1)
    positions = torch.randint(0, 60, (B, T), generator=g) if per_example else torch.arange(T)[None]
    cos, sin = rope_cos_sin(positions, rope_inv_freq(HD, 10000.0))
    return cos[:, :, None].to(dtype), sin[:, :, None].to(dtype)


def composed(qkv: torch.Tensor, rope) -> tuple[torch.Tensor, ...]:
    """What ``Attention`` computes without the Function."""
    qk, v = qkv.split([H + KV, KV], dim=2)
    if rope is not None:
        qk = apply_rotary(qk, *rope)
    q, k = qk.split([H, KV], dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


@pytest.mark.parametrize("rope_kind", ["contiguous", "per_example", None])
def test_outputs_and_gradient_equal_the_composed_operations(rope_kind):
    torch.manual_seed(0)
    rope = None if rope_kind is None else tables(rope_kind == "per_example")
    qkv = torch.randn(B, T, H + 2 * KV, HD, dtype=torch.float64, requires_grad=True)
    got = rotary_heads(qkv, H, KV, rope)
    want = composed(qkv, rope)
    assert [t.shape for t in got] == [(B, H, T, HD), (B, KV, T, HD), (B, KV, T, HD)]
    assert all(t.is_contiguous() for t in got)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

    weights = [torch.randn_like(t) for t in want]
    grad = torch.autograd.grad(weighted_sum(got, weights), qkv)[0]
    grad_want = torch.autograd.grad(weighted_sum(want, weights), qkv)[0]
    torch.testing.assert_close(grad, grad_want, rtol=0, atol=1e-12)


def weighted_sum(tensors, weights) -> torch.Tensor:
    return sum((t * w).sum() for t, w in zip(tensors, weights, strict=True))


@pytest.mark.parametrize("used", [0, 1, 2])
def test_gradient_when_only_one_output_is_used(used):
    """Autograd passes None for unused outputs; their part of the gradient is zero."""
    torch.manual_seed(0)
    rope = tables(False)
    qkv = torch.randn(B, T, H + 2 * KV, HD, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(rotary_heads(qkv, H, KV, rope)[used].sum(), qkv)[0]
    grad_want = torch.autograd.grad(composed(qkv, rope)[used].sum(), qkv)[0]
    torch.testing.assert_close(grad, grad_want, rtol=0, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(0)
    qkv = torch.randn(1, 3, H + 2 * KV, 4, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(3)[None]
    cos, sin = rope_cos_sin(positions, rope_inv_freq(4, 10000.0))
    rope = (cos[:, :, None].double(), sin[:, :, None].double())
    assert torch.autograd.gradcheck(lambda x: rotary_heads(x, H, KV, rope), (qkv,))


def test_bf16_equals_composed_bf16_within_one_rounding():
    torch.manual_seed(0)
    rope = tables(False, torch.float32)
    qkv = torch.randn(B, T, H + 2 * KV, HD).bfloat16()
    exact = composed(qkv.float(), rope)
    for got, want in zip(rotary_heads(qkv, H, KV, rope), exact, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=2**-7)
