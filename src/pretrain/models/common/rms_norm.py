"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization") with a CPU backward
of few passes.

``y = x / sqrt(mean(x²) + eps) * w``. On CUDA, ``torch.nn.RMSNorm`` dispatches to a fused
kernel. On CPU (PyTorch 2.13) it is a chain of elementwise operations (``pow``, ``mean``,
``add``, ``rsqrt``, two ``mul``) whose backward autograd builds from about ten more passes over
the activations.
:class:`RMSNorm` keeps the module (same parameter, same ``state_dict``) and, in eager mode on
CPU, computes it through :class:`_RMSNormFunction`: the forward keeps the normalized input
``x̂ = x · r`` (``r = 1 / sqrt(mean(x²) + eps)``) and the backward is

    dw = Σ_rows dy ⊙ x̂,    g = dy ⊙ w,    dx = r · (g - x̂ · mean(g ⊙ x̂))

in a product, a row reduction, a fused multiply-add and a scaling over the activations, plus
two passes for ``dw``. Compiled graphs keep ``nn.RMSNorm`` (Inductor fuses it on its own).
"""

from __future__ import annotations

import torch
from torch import nn


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm over the last dimension in fp32 (fp64 stays fp64), output in ``out_dtype``;
    the input's gradient in the input's dtype."""

    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):  # noqa: ANN001, ANN205 (autograd signature)
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
        ctx.x_dtype = x.dtype
        return out.to(out_dtype)

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
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_weight, None, None


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:class:`_RMSNormFunction` over the last dimension of ``x``; the result in
    ``out_dtype`` (None: the dtype of ``x``, as ``nn.RMSNorm``)."""
    return _RMSNormFunction.apply(x, weight, eps, out_dtype or x.dtype)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` over one last dimension, through :func:`rms_norm` in eager mode on CPU.

    ``feeds_linear``: the output goes only into linear layers (a block's pre-norm), which
    under autocast cast it to the autocast dtype first. The norm then returns it in that
    dtype already: the same values (one rounding either way), without the separate cast
    and its backward, each a pass over the activations.
    """

    def __init__(self, *args, feeds_linear: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feeds_linear = feeds_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or type(x) is not torch.Tensor  # a DTensor (sequence parallelism) takes the
            # sharding rules of the aten ops nn.RMSNorm calls
            or torch.compiler.is_compiling()
            or len(self.normalized_shape) != 1
            or self.eps is None
        ):
            return super().forward(x)
        out_dtype = None
        if self.feeds_linear and torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        return rms_norm(x, self.weight, self.eps, out_dtype)
