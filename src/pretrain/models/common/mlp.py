"""Position-wise feed-forward blocks.

* :class:`SwiGLU` (Shazeer 2020, "GLU Variants Improve Transformer"), as in Llama:
  ``down(silu(gate(x)) * up(x))``. Gate and up are one fused matrix so one matmul feeds both.
* :class:`GeluMLP` as in GPT-2 (Radford et al. 2019): ``down(gelu_tanh(up(x)))``.

Both name their residual output projection ``down`` so the scaled init finds it. Compiled,
their activation is recomputed in the backward rather than kept
(:func:`~pretrain.models.common.recompute.recomputed_when_compiled`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common.recompute import recomputed_when_compiled


def swiglu_hidden_dim(d_model: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4*d (same parameters as a 4*d MLP), rounded up."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool = False) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)  # rows: [gate; up]
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def fused_projections(self) -> dict[str, tuple[int, ...]]:
        """``gate_up``'s blocks of output rows: the gate's, then the up projection's."""
        return {"gate_up": (self.d_ff, self.d_ff)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, d_ff) each
        return self.down(recomputed_when_compiled(_silu_gate, gate, up))


class GeluMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool = True) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(recomputed_when_compiled(self.activation, self.up(x)))

    @staticmethod
    def activation(h: torch.Tensor) -> torch.Tensor:
        # tanh approximation: what GPT-2 was trained with (HF "gelu_new").
        return F.gelu(h, approximate="tanh")


def _silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up
