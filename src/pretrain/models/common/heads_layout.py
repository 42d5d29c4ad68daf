"""The fused qkv projection's output as head-major queries, keys and values, with RoPE applied,
in few passes (eager CPU).

``Attention`` projects ``x`` once into ``(B, T, H + 2·KV, hd)``. Attention through explicit
batched GEMMs (:mod:`pretrain.models.common.explicit_attention`) wants ``(B, H, T, hd)``
tensors whose ``(T, hd)`` blocks are contiguous. Composed from ``torch`` operations, RoPE
(Su et al. 2021, rotate-half convention as :func:`~pretrain.models.common.positions.apply_rotary`)
plus the transpose costs a negation, a ``cat``, two products, a sum and a copy per tensor
forward, and the backward adds the same again plus the ``cat`` that puts the gradients of
the split back together. :class:`_RotaryHeads` writes each output once, head-major, from
three passes over half or whole heads, and its backward writes the gradient of the
projection's output directly in its ``(B, T, H + 2·KV, hd)`` layout.

With ``x = [x₁, x₂]`` (the two halves of a head), cos/sin tables ``[c₁, c₂]``, ``[s₁, s₂]``:

    y₁ = x₁ c₁ - x₂ s₁        dx₁ = dy₁ c₁ + dy₂ s₂
    y₂ = x₂ c₂ + x₁ s₂        dx₂ = dy₂ c₂ - dy₁ s₁
"""

from __future__ import annotations

import torch


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``out = x·cos + rotate_half(x)·sin``; ``out`` must not overlap ``x``."""
    half = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])


def _unrotate_into(out: torch.Tensor, dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``out = dy·cos - rotate_half(dy·sin)``: the gradient of :func:`_rotate_into`'s input."""
    half = dy.shape[-1] // 2
    torch.mul(dy, cos, out=out)
    out[..., :half].addcmul_(dy[..., half:], sin[..., half:])
    out[..., half:].addcmul_(dy[..., :half], sin[..., :half], value=-1.0)


class _RotaryHeads(torch.autograd.Function):
    """``(B, T, H + 2KV, hd)`` -> contiguous q ``(B, H, T, hd)``, k and v ``(B, KV, T, hd)``."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_heads, n_kv_heads):  # noqa: ANN001, ANN205
        B, T, _, hd = qkv.shape
        H, KV = n_heads, n_kv_heads
        heads = qkv.transpose(1, 2)  # (B, H + 2KV, T, hd), a view
        q = qkv.new_empty(B, H, T, hd)
        k = qkv.new_empty(B, KV, T, hd)
        if cos is None:
            q.copy_(heads[:, :H])
            k.copy_(heads[:, H : H + KV])
        else:
            # (1 or B, T, 1, hd) tables for the token-major layout -> (1 or B, 1, T, hd)
            cos, sin = cos.to(qkv.dtype).transpose(1, 2), sin.to(qkv.dtype).transpose(1, 2)
            _rotate_into(q, heads[:, :H], cos, sin)
            _rotate_into(k, heads[:, H : H + KV], cos, sin)
        v = heads[:, H + KV :].contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.heads = (H, KV)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        return q, k, v

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):  # noqa: ANN001, ANN205
        cos, sin = ctx.saved_tensors
        H, KV = ctx.heads
        grads = (grad_q, grad_k, grad_v)
        ref = next((g for g in grads if g is not None), None)
        if ref is None:
            return None, None, None, None, None
        B, _, T, hd = ref.shape
        shape = (B, T, H + 2 * KV, hd)
        # every part is written below unless autograd passed None for an unused output
        grad = ref.new_empty(shape) if all(g is not None for g in grads) else ref.new_zeros(shape)
        grad_heads = grad.transpose(1, 2)  # (B, H + 2KV, T, hd), a view of grad
        for g, part in (
            (grad_q, grad_heads[:, :H]),
            (grad_k, grad_heads[:, H : H + KV]),
        ):
            if g is None:
                continue
            if cos is None:
                part.copy_(g)
            else:
                _unrotate_into(part, g, cos, sin)
        if grad_v is not None:
            grad_heads[:, H + KV :].copy_(grad_v)
        return grad, None, None, None, None


def rotary_heads(
    qkv: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the fused projection ``qkv`` (B, T, H + 2KV, hd) into contiguous head-major
    ``q`` (B, H, T, hd), ``k`` and ``v`` (B, KV, T, hd), rotating q and k by ``rope`` when
    given (``(cos, sin)`` from ``RotaryEmbedding``, shaped ``(1 or B, T, 1, hd)``): what
    ``apply_rotary`` and ``transpose(1, 2)`` compute, laid out for batched GEMMs."""
    cos, sin = (None, None) if rope is None else rope
    return _RotaryHeads.apply(qkv, cos, sin, n_heads, n_kv_heads)
