"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization") with a CPU backward
of few passes.

``y = x / sqrt(mean(x²) + eps) * w``. On CUDA, ``torch.nn.RMSNorm`` dispatches to a fused
kernel. On CPU (PyTorch 2.13) it is a chain of elementwise operations (``pow``, ``mean``,
``add``, ``rsqrt``, two ``mul``) whose backward autograd builds from about ten more passes over
the activations; in a bf16 ``tiny`` training step the norms took several percent of the step.
:class:`RMSNorm` keeps the module (same parameter, same ``state_dict``) and, in eager mode on
CPU, computes it through :class:`_RMSNormFunction`: the forward keeps the normalized input
``x̂ = x · r`` (``r = 1 / sqrt(mean(x²) + eps)``) and the backward is

    dw = Σ_rows dy ⊙ x̂,    g = dy ⊙ w,    dx = r · (g - x̂ · mean(g ⊙ x̂))

with one product, one row reduction and one fused multiply-add over the activations besides
the two for ``dw``. Compiled graphs keep ``nn.RMSNorm`` (Inductor fuses it on its own).
"""

from __future__ import annotations

import torch
from torch import nn


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm over the last dimension in fp32 (fp64 stays fp64), output in the input's dtype,
    as ``nn.RMSNorm`` does."""

    @staticmethod
    def forward(ctx, x, weight, eps):  # noqa: ANN001, ANN205 (autograd signature)
        with torch.autocast(x.device.type, enabled=False):  # CPU autocast lowers vecdot
            acc = torch.promote_types(x.dtype, torch.float32)
            xf = x.to(acc)
            width = x.shape[-1]
            # r = 1 / sqrt(mean(x²) + eps); (..., 1). vecdot sums x² as pow(2).mean() does.
            rstd = torch.linalg.vecdot(xf, xf, dim=-1).unsqueeze(-1)
            rstd = rstd.div_(width).add_(eps).rsqrt_()
            x_hat = xf * rstd
            out = x_hat if weight is None else x_hat * weight.to(acc)
        ctx.save_for_backward(x_hat, rstd, weight)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        x_hat, rstd, weight = ctx.saved_tensors
        with torch.autocast(x_hat.device.type, enabled=False):
            return _RMSNormFunction._backward(ctx, grad_out, x_hat, rstd, weight)

    @staticmethod
    def _backward(ctx, grad_out, x_hat, rstd, weight):  # noqa: ANN001, ANN205
        width = x_hat.shape[-1]
        dy = grad_out.to(x_hat.dtype)
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (dy * x_hat).reshape(-1, width).sum(0).to(weight.dtype)
        g = dy if weight is None else dy * weight.to(x_hat.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            mean_g_xhat = torch.linalg.vecdot(g, x_hat, dim=-1).unsqueeze(-1)  # (..., 1)
            grad_x = torch.addcmul(g, x_hat, mean_g_xhat, value=-1.0 / width).mul_(rstd)
            grad_x = grad_x.to(grad_out.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """:class:`_RMSNormFunction` over the last dimension of ``x``."""
    return _RMSNormFunction.apply(x, weight, eps)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` over one last dimension, through :func:`rms_norm` in eager mode on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or torch.compiler.is_compiling()
            or len(self.normalized_shape) != 1
            or self.eps is None
        ):
            return super().forward(x)
        return rms_norm(x, self.weight, self.eps)
