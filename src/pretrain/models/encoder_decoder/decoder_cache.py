"""Keys and values the T5 decoder has computed, so generation runs one new token per step.

Per decoder block: its causal self-attention's keys and values grow by the new tokens each
step; its cross-attention's are the encoder output's projections, computed at the first step
and reused. Without a cache every step would run the decoder over all tokens so far and
project the encoder output again in every block.
"""

from __future__ import annotations

import torch


class AttentionCache:
    """One attention layer's keys and values, ``(B, H, T, d_kv)`` each, or None while empty."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``k, v`` ``(B, H, t, d_kv)`` after the positions held; returns all of them."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class DecoderCache:
    """The caches of every decoder block, and how many decoder positions they hold."""

    def __init__(self, n_layers: int) -> None:
        self.self_attention = [AttentionCache() for _ in range(n_layers)]
        self.cross_attention = [AttentionCache() for _ in range(n_layers)]
        self.length = 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``i`` becomes the old row ``rows[i]`` (beam search keeps the best beams)."""
        for cache in (*self.self_attention, *self.cross_attention):
            if cache.k is not None and cache.v is not None:
                cache.k, cache.v = cache.k.index_select(0, rows), cache.v.index_select(0, rows)
