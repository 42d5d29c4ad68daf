"""RMSNorm through the CPU autograd Function equals ``nn.RMSNorm``: values, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pretrain.models.common.rms_norm import RMSNorm, rms_norm


def reference(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """What ``nn.RMSNorm`` itself computes (its composite CPU implementation)."""
    return nn.RMSNorm.forward(norm, x)


def make_norm(width: int, affine: bool = True, dtype=torch.float64) -> RMSNorm:
    norm = RMSNorm(width, eps=1e-5, elementwise_affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.rand(width, dtype=dtype) + 0.5)
    return norm


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 16), (2, 5, 3, 8)])
@pytest.mark.parametrize("affine", [True, False])
def test_values_and_gradients_equal_nn_rmsnorm_in_fp64(shape, affine):
    torch.manual_seed(0)
    norm = make_norm(shape[-1], affine)
    x = (torch.randn(shape, dtype=torch.float64) * 3).requires_grad_()
    grad_out = torch.randn(shape, dtype=torch.float64)

    out = norm(x)
    assert out.grad_fn is not None and "RMSNormFunction" in type(out.grad_fn).__name__
    grads = torch.autograd.grad(out, [x, *norm.parameters()], grad_out)
    expected_out = reference(norm, x)
    expected = torch.autograd.grad(expected_out, [x, *norm.parameters()], grad_out)

    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))
    assert torch.autograd.gradcheck(lambda a: rms_norm(a, None, 1e-5), (x,))


def test_fp32_forward_matches_nn_rmsnorm_to_rounding():
    torch.manual_seed(0)
    norm = make_norm(256, dtype=torch.float32)
    x = torch.randn(64, 256) * 5
    torch.testing.assert_close(norm(x), reference(norm, x), rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_input_keeps_its_dtype_and_is_computed_in_fp32():
    """Per-head q/k norms see bf16 under autocast: output and input gradient stay bf16, and
    the values are the fp32 result rounded once, as nn.RMSNorm's."""
    torch.manual_seed(0)
    norm = make_norm(64, dtype=torch.float32)
    x = (torch.randn(4, 10, 64) * 2).bfloat16().requires_grad_()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    exact = reference(norm, x.detach().float())
    torch.testing.assert_close(out.float(), exact, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(out, reference(norm, x.detach()), rtol=2**-7, atol=1e-6)
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32


def test_under_cpu_autocast_fp32_input_gives_fp32_output_as_nn_rmsnorm():
    """CPU autocast would lower the reduction to bf16; the Function turns autocast off."""
    norm = make_norm(32, dtype=torch.float32)
    x = torch.randn(2, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = norm(x), reference(norm, x)
    assert out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_state_dict_is_nn_rmsnorm_s():
    norm = make_norm(8, dtype=torch.float32)
    plain = nn.RMSNorm(8, eps=1e-5)
    plain.load_state_dict(norm.state_dict())
    assert norm.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 8)
    torch.testing.assert_close(norm(x), plain(x), rtol=1e-6, atol=1e-6)


def test_a_norm_that_feeds_a_linear_returns_the_autocast_dtype_with_the_same_result():
    """Under autocast the linear casts the norm's output to bf16 first; a ``feeds_linear``
    norm hands it over in bf16 already: output and every gradient are bit for bit the same."""
    torch.manual_seed(0)
    results = []
    for feeds_linear in (False, True):
        torch.manual_seed(0)
        norm = RMSNorm(32, eps=1e-5, feeds_linear=feeds_linear)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
        linear = nn.Linear(32, 16)
        x = torch.randn(4, 5, 32, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            normed = norm(x)
            out = linear(normed)
        assert normed.dtype == (torch.bfloat16 if feeds_linear else torch.float32)
        out.float().square().sum().backward()
        assert x.grad.dtype == torch.float32
        results.append((out, x.grad, norm.weight.grad, linear.weight.grad))
        assert norm(x).dtype == torch.float32  # no autocast: the input's dtype
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
