"""Position encodings: rotary embeddings (RoPE; Su et al. 2021, "RoFormer").

Learned absolute positions (GPT-2) are a plain ``nn.Embedding`` in the model. RoPE follows
the *rotate-half* convention of Hugging Face Llama (the two halves of each head are the
(real, imaginary) parts, not interleaved pairs), so weights move between the two unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """``theta ** (-2i / head_dim)`` for ``i < head_dim / 2``, computed as HF Llama does, on
    ``device`` (a model that builds its tables every forward builds them where it runs: a
    copy from the host would wait for the device)."""
    steps = torch.arange(0, head_dim, 2, dtype=torch.float, device=device)
    return 1.0 / (theta ** (steps / head_dim))


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """cos and sin of ``positions * inv_freq``, duplicated over both halves: ``(..., head_dim)``."""
    freqs = positions[..., None].float() * inv_freq  # (..., head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (..., head_dim)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, T, H, head_dim) by per-position angles; cos/sin broadcast to it."""
    # Tables are float32; under bf16 autocast q/k are bf16 and must stay so for SDPA.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions ``0..max_seq_len-1``, computed once.

    The tables are non-persistent buffers: they never enter a checkpoint and are rebuilt by
    :meth:`reset_parameters` (after ``to_empty`` from the meta device, for instance).
    Positions beyond the table (generation past ``max_seq_len``) are computed on the fly.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.theta = theta
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        device = self.inv_freq.device
        # Computed in float32 whatever the buffers' dtype, so a bf16 model gets rounded
        # tables rather than tables computed from rounded frequencies.
        inv_freq = rope_inv_freq(self.head_dim, self.theta, device)
        self.inv_freq.copy_(inv_freq)
        cos, sin = rope_cos_sin(torch.arange(self.max_seq_len, device=device), inv_freq)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def forward(
        self, seq_len: int, offset: int = 0, position_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin shaped to broadcast against (B, T, H, head_dim).

        Args:
            seq_len: T.
            offset: first position when ``position_ids`` is None (KV-cache decoding).
            position_ids: (B, T) explicit positions (e.g. restarting at each document); they
                must be below ``max_seq_len``.

        Returns:
            ``(1, T, 1, head_dim)`` tables for contiguous positions, ``(B, T, 1, head_dim)``
            for explicit ``position_ids``; float32.
        """
        if position_ids is not None:
            # A gather, not a recomputation: training positions stay inside the table, and a
            # bound check here would cost a host sync every step.
            return self.cos[position_ids][:, :, None], self.sin[position_ids][:, :, None]
        end = offset + seq_len
        if end <= self.max_seq_len:
            return self.cos[None, offset:end, None], self.sin[None, offset:end, None]
        device = self.inv_freq.device
        positions = torch.arange(offset, end, device=device)
        # From float32 frequencies: the buffer is rounded in a model cast to bf16, and rounded
        # frequencies drift further from the true angle at every position.
        cos, sin = rope_cos_sin(positions, rope_inv_freq(self.head_dim, self.theta, device))
        return cos[None, :, None], sin[None, :, None]
