"""Weight initialization shared by the model families.

GPT-2 (Radford et al. 2019, sec. 2.3) draws every weight from N(0, std) and scales the
weights of each residual output projection by 1/sqrt(N) for N residual layers; with two
residual branches per block that is ``std / sqrt(2 * n_layers)``, as in nanoGPT, Megatron and
OLMo. The scaling keeps the residual stream's variance from growing with depth.
"""

from __future__ import annotations

import math

from torch import nn

from pretrain.models.common.norms import reset_norm


def residual_std(init_std: float, n_layers: int) -> float:
    """Standard deviation for the attention and MLP output projections."""
    return init_std / math.sqrt(2 * n_layers)


def init_normal(module: nn.Module, std: float) -> None:
    """N(0, std) for every Linear and Embedding weight below ``module``, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        else:
            reset_norm(m)


def init_residual_output(linear: nn.Linear, init_std: float, n_layers: int) -> None:
    """Re-draw a residual output projection with the depth-scaled std (bias stays zero)."""
    nn.init.normal_(linear.weight, mean=0.0, std=residual_std(init_std, n_layers))
