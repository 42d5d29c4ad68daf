"""``train.activation_memory_budget``: checked when the config loads, and it makes the
compiled step keep less (the trainer applying it: tests/integration/test_train.py)."""

from __future__ import annotations

import pytest
import torch
import torch._functorch.config as functorch_config

from pretrain.config import ConfigError, ExperimentConfig, load_config
from pretrain.train.activation_memory import saved_for_backward


def mlp(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x @ w1) @ w2


def saved_bytes(budget: float) -> int:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g, requires_grad=True)
    w1 = torch.randn(32, 128, generator=g, requires_grad=True)
    w2 = torch.randn(128, 32, generator=g, requires_grad=True)
    with functorch_config.patch(activation_memory_budget=budget):
        return sum(t.nbytes for t in saved_for_backward(mlp, x, w1, w2))


def test_a_lower_budget_keeps_less():
    # at 1.0 both the GELU's input and output are kept (its output feeds a weight gradient)
    assert saved_bytes(0.5) < saved_bytes(1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.activation_memory_budget=0"], r"must be in \(0, 1\], got 0"),
        (["--train.activation_memory_budget=1.5"], r"must be in \(0, 1\], got 1.5"),
        (["--train.activation_memory_budget=0.8"], "compiled steps only; set train.compile"),
    ],
)
def test_bad_budgets_are_refused_naming_the_key(overrides, message):
    cfg = load_config(ExperimentConfig, overrides=["--data.train=x", *overrides])
    with pytest.raises(ConfigError, match="train.activation_memory_budget"):
        cfg.validate()
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_a_budget_with_compile_is_accepted():
    overrides = ["--data.train=x", "--train.compile=true", "--train.activation_memory_budget=0.8"]
    cfg = load_config(ExperimentConfig, overrides=overrides).validate()
    assert cfg.train.activation_memory_budget == 0.8
