"""Compiled, the MLPs keep their activation's input for the backward and recompute its output
(``recomputed_when_compiled``): less kept, the same values and gradients; eagerly nothing
changes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pretrain.models.common import mlp as common_mlp
from pretrain.models.common.mlp import GeluMLP, SwiGLU
from pretrain.models.encoder.model import ErfGeluMLP
from pretrain.models.encoder_decoder import model as encoder_decoder_model
from pretrain.models.encoder_decoder.configs import encoder_decoder_config
from pretrain.models.encoder_decoder.model import GatedGeluMLP
from pretrain.train.activation_memory import saved_for_backward

D, D_FF, N = 16, 64, 128


def _modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    t5 = dataclasses.replace(encoder_decoder_config("debug", 100), d_model=D, d_ff=D_FF)
    return {
        "gelu": GeluMLP(D, D_FF),
        "erf-gelu": ErfGeluMLP(D, D_FF),
        "swiglu": SwiGLU(D, D_FF),
        "gated-gelu": GatedGeluMLP(t5),
    }


def _wide_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes the compiled forward keeps of ``(N, d_ff)``-shaped activations (the hidden ones;
    ``(N, 2 d_ff)`` for SwiGLU's fused matrix), weights left out."""
    saved = saved_for_backward(module, x)
    return sum(t.nbytes for t in saved if t.shape in ((N, D_FF), (N, 2 * D_FF)))


@pytest.mark.parametrize("name", ["gelu", "erf-gelu", "swiglu", "gated-gelu"])
def test_the_compiled_mlp_keeps_less_of_its_hidden_width(name, monkeypatch):
    module = _modules()[name]
    x = torch.randn(N, D, requires_grad=True)
    recomputing = _wide_bytes(module, x)
    plain = lambda fn, *args: fn(*args)  # noqa: E731 - the helper switched off
    monkeypatch.setattr(common_mlp, "recomputed_when_compiled", plain)
    monkeypatch.setattr(encoder_decoder_model, "recomputed_when_compiled", plain)
    keeping = _wide_bytes(module, x)
    assert recomputing < keeping
    if name in ("gelu", "erf-gelu"):  # only the activation's input: one fp32 (N, d_ff)
        assert recomputing == N * D_FF * 4 and keeping == 2 * N * D_FF * 4


@pytest.mark.parametrize("name", ["gelu", "erf-gelu", "swiglu", "gated-gelu"])
def test_compiled_values_and_gradients_are_the_eager_ones(name):
    module = _modules()[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    projection = torch.randn(N, D, generator=g)
    results = []
    for run in (module, torch.compile(module, backend="aot_eager")):
        xi = x.clone().requires_grad_(True)
        out = run(xi)
        (out * projection).sum().backward()
        grads = [xi.grad] + [p.grad.clone() for p in module.parameters()]
        module.zero_grad(set_to_none=True)
        results.append((out.detach(), grads))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    torch.testing.assert_close(compiled_out, eager_out)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        assert float(expected.abs().max()) > 0
        torch.testing.assert_close(got, expected)
