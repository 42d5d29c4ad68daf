"""Normalization layers.

RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization") for Llama-style
models and per-head q/k normalization (as OLMo-2 and Qwen3); LayerNorm with bias (Ba et al.
2016) for GPT-2-style models. LayerNorm is the ``torch.nn`` module (fused kernels on CPU and
CUDA); RMSNorm is :class:`pretrain.models.common.rms_norm.RMSNorm`, ``nn.RMSNorm`` with a
backward of few passes in eager mode on CPU.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from pretrain.models.common.rms_norm import RMSNorm

NormKind = Literal["rms", "layer"]


def make_norm(
    kind: NormKind, dim: int, eps: float, bias: bool = True, feeds_linear: bool = False
) -> nn.Module:
    """An RMSNorm (no bias, ever) or a LayerNorm (``bias`` as asked) over the last ``dim``.

    ``feeds_linear``: the output goes into linear layers only (see :class:`RMSNorm`).
    """
    if kind == "rms":
        return RMSNorm(dim, eps=eps, feeds_linear=feeds_linear)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    raise ValueError(f"unknown norm kind {kind!r}; valid: 'rms', 'layer'")


def reset_norm(module: nn.Module) -> None:
    """Weights to one, bias (if any) to zero: the identity at initialization."""
    if isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
