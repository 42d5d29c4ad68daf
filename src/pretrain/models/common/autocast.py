"""Tensors cast to the autocast dtype by hand, where autocast itself does not reach."""

from __future__ import annotations

import torch


def to_autocast_dtype(t: torch.Tensor) -> torch.Tensor:
    """``t`` in autocast's dtype when autocast is on for its device, else ``t`` itself.

    For operands autocast leaves alone: a bias built once and shared by every layer (cast once,
    not per layer), and FlexAttention's q, k and v (no autocast rule in every PyTorch version).
    """
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return t.to(torch.get_autocast_dtype(device))
    return t
