"""Attention as explicit matrix products, for short sequences on CPU in eager mode.

``softmax(q kᵀ · scale + mask) v`` (Vaswani et al. 2017, eq. 1) with the probabilities kept
for the backward pass, which then needs no recomputation and no mask: a masked pair has
probability 0, so its score gradient ``p · (dp - Σ p·dp)`` is 0 too. Causal self-attention
longer than :data:`CAUSAL_BLOCK` goes by blocks of queries, each against the keys up to its
last query only (:class:`_CausalBlockAttention`), which skips most of the masked half of the
products.

Why beside SDPA: on CPU, PyTorch's flash-attention kernel for bf16 is slower than the bf16
GEMMs this does, for sequences up to about a thousand keys, and SDPA's own explicit "math"
backend is no faster than the flash kernel there. In fp32 the flash kernel is as fast as the
plain products from 256 keys on, but not as the blocked causal ones, and it has no gradient
for a float mask: SDPA then runs its "math" backend (T5's learned bias, XLNet's scores).
Figures from ``bench/bench_cpu_attention.py`` are in ``docs/benchmarks.md``. This path stores the
probabilities, as Hugging Face's "eager" attention does, so it takes at most
:data:`MAX_KEYS` keys, where they stay small next to the activations.
"""

from __future__ import annotations

import torch

MAX_KEYS = 512
"""Longest key sequence the explicit path takes; longer ones go to SDPA's flash kernel."""

CAUSAL_BLOCK = 128
"""Query rows per block of causal attention over more keys than this (see
:class:`_CausalBlockAttention`)."""

# Added to the score of a pair that may not attend: finite, so a row with nothing visible is
# uniform rather than NaN, and still finite in bf16 (not in fp16, hence bf16 only).
_MASKED_SCORE = -1e30


def prefers_explicit(
    q: torch.Tensor, k: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None
) -> bool:
    """True where :func:`explicit_attention` beats SDPA on CPU in eager mode, keys up to
    :data:`MAX_KEYS`: any attention in bf16; in fp32, causal self-attention (queries and keys
    the same length: blocked, see :class:`_CausalBlockAttention`), and attention whose float
    ``mask`` needs a gradient (T5's learned position bias, XLNet's relative position scores).
    SDPA's fp32 flash kernel is as fast as the plain products for other masks from 256 keys
    on (``docs/benchmarks.md``), but it has no gradient for a mask, so for such a mask SDPA
    runs its "math" backend, which is the same products in more passes.

    Compiled graphs keep SDPA (Inductor has its own attention lowering on CPU; not measured
    against this).
    """
    if (
        q.device.type != "cpu"
        or k.dtype != q.dtype
        or k.shape[-2] > MAX_KEYS
        or torch.compiler.is_compiling()
    ):
        return False
    if q.dtype == torch.bfloat16:
        return True
    if q.dtype != torch.float32:
        return False
    learned_mask = mask is not None and mask.is_floating_point() and mask.requires_grad
    return learned_mask or (causal and q.shape[-2] == k.shape[-2])


def _attend(q, k, v, scale: float, bias, bias_from: int = 0):  # noqa: ANN001, ANN202
    """One block's forward: ``(softmax(q kᵀ·scale + bias) v, probabilities)``; ``bias`` is
    added to the score columns from ``bias_from`` on."""
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, Tq, Tk)
    if scale != 1.0:
        scores.mul_(scale)
    if bias is not None:
        scores[..., bias_from:].add_(bias)  # four times faster than masked_fill_ with a bool mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v), probs  # (B, H, Tq, hd), (B, H, Tq, Tk)


def _attend_backward(grad_out, q, k, v, probs):  # noqa: ANN001, ANN202
    """One block's backward: gradients of the scores, q, k and v, all in the inputs' dtype
    (the softmax kernels accumulate in fp32 inside); q's and k's are not yet scaled (the
    caller scales them once, on fewer values than the scores)."""
    grad_v = torch.matmul(probs.transpose(-1, -2), grad_out)
    grad_probs = torch.matmul(grad_out, v.transpose(-1, -2))  # (B, H, Tq, Tk)
    grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
    grad_q = torch.matmul(grad_scores, k)
    grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
    return grad_scores, grad_q, grad_k, grad_v


class _ExplicitAttention(torch.autograd.Function):
    """Forward saves ``q, k, v`` and the probabilities; backward is four matrix products."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # noqa: ANN001, ANN205 (autograd signature)
        out, probs = _attend(q, k, v, scale, bias)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        ctx.bias_shape = None if bias is None else bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        q, k, v, probs = ctx.saved_tensors
        grad_scores, grad_q, grad_k, grad_v = _attend_backward(grad_out, q, k, v, probs)
        grad_bias = None
        if ctx.needs_input_grad[3]:  # a learned bias (T5's positions): summed to its shape
            grad_bias = grad_scores.sum_to_size(ctx.bias_shape)
        if ctx.scale != 1.0:
            grad_q.mul_(ctx.scale)
            grad_k.mul_(ctx.scale)
        return grad_q, grad_k, grad_v, grad_bias, None


class _CausalBlockAttention(torch.autograd.Function):
    """Causal attention by query blocks: block ``[s, e)`` attends to keys ``[0, e)`` only.

    The keys after a block's last query are masked for all of its queries, so their scores
    are never computed: with blocks of ``T / n`` queries the products cost ``(n + 1) / 2n`` of
    the full ``T x T`` ones (3/4 for two blocks, 5/8 for four), forward and backward. Only the
    diagonal square of each block needs the causal mask. Keys and values get gradient from
    several blocks: the last block, which reaches every key, writes it, and the earlier ones
    add theirs to the leading keys, in the inputs' dtype; in bf16 the errors against fp64
    stay within twice those of SDPA's bf16 kernel (``test_bf16_error_is_that_of_sdpa_in_bf16``
    in ``tests/unit/test_explicit_attention.py``, with three blocks).
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, block):  # noqa: ANN001, ANN205 (autograd signature)
        T = q.shape[-2]
        tri = torch.full((block, block), _MASKED_SCORE, dtype=q.dtype, device=q.device).triu_(1)
        outs, probs = [], []
        for start in range(0, T, block):
            end = min(start + block, T)
            out, p = _attend(
                q[..., start:end, :],
                k[..., :end, :],
                v[..., :end, :],
                scale,
                tri[: end - start, : end - start],  # the diagonal square: keys [start, end)
                bias_from=start,
            )  # p: (B, H, end - start, end)
            outs.append(out)
            probs.append(p)
        ctx.save_for_backward(q, k, v, *probs)
        ctx.scale, ctx.block = scale, block
        return torch.cat(outs, dim=-2)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        q, k, v, *probs = ctx.saved_tensors
        grad_q = torch.empty_like(q)
        grad_k = grad_v = None
        for i in reversed(range(len(probs))):  # the last block reaches every key: it assigns
            start = i * ctx.block
            end = start + probs[i].shape[-2]
            _, gq, gk, gv = _attend_backward(
                grad_out[..., start:end, :],
                q[..., start:end, :],
                k[..., :end, :],
                v[..., :end, :],
                probs[i],
            )
            grad_q[..., start:end, :] = gq
            if grad_k is None:
                grad_k, grad_v = gk, gv
            else:
                grad_k[..., :end, :] += gk
                grad_v[..., :end, :] += gv
        if ctx.scale != 1.0:
            grad_q.mul_(ctx.scale)
            grad_k.mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None


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
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if is_causal and q.shape[-2] == k.shape[-2] and q.shape[-2] > CAUSAL_BLOCK:
        return _CausalBlockAttention.apply(q, k, v, scale, CAUSAL_BLOCK)
    if is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril_()
    bias = mask
    if mask is not None and mask.dtype == torch.bool:  # 0 where visible, very negative not
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~mask, _MASKED_SCORE)
    return _ExplicitAttention.apply(q, k, v, bias, scale)
