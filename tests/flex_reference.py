"""A differentiable FlexAttention for CPU tests of the backward.

PyTorch runs FlexAttention's backward on CUDA only. This reference computes the same function
with plain tensor ops: every score, then ``score_mod`` and the block mask's ``mask_mod``
evaluated once on broadcast index tensors (b, h, q, kv) instead of per element, then softmax.
Autograd differentiates it, tables captured by a ``score_mod`` included, so the gradients of a
flex path (its layouts, gathers and captured tables) can be compared with the dense path's on
CPU. The kernel itself, and PyTorch's gradients of captured buffers, are checked on CUDA in
``tests/gpu``.
"""

from __future__ import annotations

import torch


def reference_flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_mod=None,
    block_mask=None,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``flex_attention`` of ``q`` ``(B, H, M, D)`` over ``k, v`` ``(B, H|KV, T, D)``."""
    B, H, M, D = q.shape
    T = k.shape[2]
    if enable_gqa and k.shape[1] != H:
        k = k.repeat_interleave(H // k.shape[1], dim=1)
        v = v.repeat_interleave(H // v.shape[1], dim=1)
    scale = D**-0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, M, T)
    b = torch.arange(B)[:, None, None, None]
    h = torch.arange(H)[None, :, None, None]
    q_idx = torch.arange(M)[None, None, :, None]
    kv_idx = torch.arange(T)[None, None, None, :]
    if score_mod is not None:
        scores = score_mod(scores, b, h, q_idx, kv_idx)
    if block_mask is not None:
        allowed = block_mask.mask_mod(b, h, q_idx, kv_idx)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
