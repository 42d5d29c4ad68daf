"""Attention as two explicit matrix products, for short sequences in bf16 on CPU.

``softmax(q kᵀ · scale + mask) v`` (Vaswani et al. 2017, eq. 1) with the probabilities kept
for the backward pass, which then needs no recomputation and no mask: a masked pair has
probability 0, so its score gradient ``p · (dp - Σ p·dp)`` is 0 too.

Why beside SDPA: on CPU, PyTorch's flash-attention kernel for bf16 is slower than the two
bf16 GEMMs this does, for sequences up to about a thousand keys, and SDPA's own explicit
"math" backend is no faster than the flash kernel there. ``bench/bench_cpu_attention.py``
(2 threads, 4 heads of 64, B x T = 2048, causal, forward + backward, medians): T 256, flash
17.5 ms, math 18.0, this 9.2; T 512, 28.5 / 34.4 / 17.5; T 1024, 32.8 / 100.5 / 31.3; in
fp32 the flash kernel wins from T 256 on (``docs/benchmarks.md``). This path stores the
``(B, H, T, T)`` probabilities, as Hugging Face's "eager" attention does, so it takes at most
:data:`MAX_KEYS` keys, where they stay small next to the activations.
"""

from __future__ import annotations

import torch

MAX_KEYS = 512
"""Longest key sequence the explicit path takes; longer ones go to SDPA's flash kernel."""

# Added to the score of a pair that may not attend: finite, so a row with nothing visible is
# uniform rather than NaN, and still finite in bf16 (not in fp16, hence bf16 only).
_MASKED_SCORE = -1e30


def prefers_explicit(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True where :func:`explicit_attention` beats SDPA: eager bf16 on CPU, short keys.

    Compiled graphs keep SDPA (Inductor has its own attention lowering on CPU; not measured
    against this).
    """
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and k.dtype == q.dtype
        and k.shape[-2] <= MAX_KEYS
        and not torch.compiler.is_compiling()
    )


class _ExplicitAttention(torch.autograd.Function):
    """Forward saves ``q, k, v`` and the probabilities; backward is four matrix products, all
    in the inputs' dtype (the softmax kernels accumulate in fp32 inside)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # noqa: ANN001, ANN205 (autograd signature)
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, Tq, Tk)
        if scale != 1.0:
            scores.mul_(scale)
        if bias is not None:
            scores.add_(bias)  # four times faster than masked_fill_ with a boolean mask
        probs = torch.softmax(scores, dim=-1)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        ctx.bias_shape = None if bias is None else bias.shape
        return torch.matmul(probs, v)  # (B, H, Tq, hd)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        q, k, v, probs = ctx.saved_tensors
        grad_probs = torch.matmul(grad_out, v.transpose(-1, -2))  # (B, H, Tq, Tk)
        grad_v = torch.matmul(probs.transpose(-1, -2), grad_out)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_bias = None
        if ctx.needs_input_grad[3]:  # a learned bias (T5's positions): summed to its shape
            grad_bias = grad_scores.sum_to_size(ctx.bias_shape)
        grad_q = torch.matmul(grad_scores, k)  # (B, H, Tq, hd): scaled here, on fewer values
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
        if ctx.scale != 1.0:
            grad_q.mul_(ctx.scale)
            grad_k.mul_(ctx.scale)
        return grad_q, grad_k, grad_v, grad_bias, None


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """What ``F.scaled_dot_product_attention(q, k, v, mask, is_causal, scale=scale,
    enable_gqa=True)`` computes.

    Args:
        q: (B, H, Tq, hd) queries.
        k, v: (B, KV, Tk, hd) keys and values; H must be a multiple of KV (grouped-query
            heads are repeated to H here).
        mask: broadcastable to (B, H, Tq, Tk): boolean, True where a query may see a key, or
            float, added to the scores (and given its gradient when it requires one, as T5's
            learned position bias does).
        is_causal: key j visible to query i when j <= i (SDPA's top-left alignment); only
            without ``mask``.
        scale: factor of ``q kᵀ``; None is ``1 / sqrt(hd)``.

    Returns:
        (B, H, Tq, hd), in the dtype of ``q``.

    Raises:
        ValueError: given both a mask and ``is_causal``.
    """
    if mask is not None and is_causal:
        raise ValueError("explicit_attention takes a mask or is_causal, not both")
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril_()
    bias = mask
    if mask is not None and mask.dtype == torch.bool:  # 0 where visible, very negative not
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~mask, _MASKED_SCORE)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _ExplicitAttention.apply(q, k, v, bias, scale)
