"""Schedules (exact values) and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.optim import build_optimizer, fused_adamw_applies, lr_at, param_groups

PEAK = 1e-3


def lr(step, schedule, warmup=10, max_steps=110, **kw):
    return lr_at(
        step, schedule=schedule, peak_lr=PEAK, warmup_steps=warmup, max_steps=max_steps, **kw
    )


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "linear", "constant"])
def test_linear_warmup_reaches_peak(schedule):
    assert lr(0, schedule) == pytest.approx(PEAK / 10)
    assert lr(4, schedule) == pytest.approx(PEAK / 2)
    assert lr(9, schedule) == pytest.approx(PEAK)


def test_cosine_decays_to_ten_percent_of_peak_at_the_last_step():
    """110 steps (0..109), 10 of warmup: the decay's 100 steps are 10..109, step s taking
    the rate at progress (s + 1 - 10) / 100, so the last step trains at the floor."""
    assert lr(10, "cosine") == pytest.approx(
        0.1 * PEAK + 0.9 * PEAK * 0.5 * (1 + math.cos(math.pi / 100))
    )
    assert lr(10, "cosine") < PEAK  # the first decay step already decays
    assert lr(59, "cosine") == pytest.approx(0.1 * PEAK + 0.9 * PEAK * 0.5)  # halfway
    assert lr(34, "cosine") == pytest.approx(
        0.1 * PEAK + 0.9 * PEAK * 0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr(108, "cosine") > 0.1 * PEAK
    assert lr(109, "cosine") == pytest.approx(0.1 * PEAK)  # the run's last step
    assert lr(500, "cosine") == pytest.approx(0.1 * PEAK)  # stays at the floor


def test_wsd_is_stable_then_cools_down_with_one_minus_sqrt():
    # 110 steps, 20% decay = 22 steps: 88..109, step s at progress (s + 1 - 88) / 22
    assert lr(50, "wsd") == PEAK
    assert lr(87, "wsd") == PEAK
    assert lr(88, "wsd", min_lr_ratio=0.0) == pytest.approx(PEAK * (1 - math.sqrt(1 / 22)))
    assert lr(98, "wsd", min_lr_ratio=0.0) == pytest.approx(PEAK * (1 - math.sqrt(11 / 22)))
    assert lr(109, "wsd", min_lr_ratio=0.0) == pytest.approx(0.0)
    assert lr(109, "wsd") == pytest.approx(0.1 * PEAK)
    decays = [lr(s, "wsd") for s in range(87, 110)]
    assert all(a > b for a, b in zip(decays[:-1], decays[1:], strict=True))  # each decays


def test_linear_and_constant():
    assert lr(59, "linear") == pytest.approx(PEAK - 0.9 * PEAK * 0.5)
    assert lr(109, "linear") == pytest.approx(0.1 * PEAK)
    assert lr(100, "constant") == PEAK
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr(0, "step")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied


def test_no_decay_on_norms_biases_and_embeddings_even_when_tied():
    model = _Tiny()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert [p is model.proj.weight for p in decay["params"]] == [True]
    names = {id(p) for p in no_decay["params"]}
    assert names == {
        id(model.embed.weight),
        id(model.proj.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5  # the tied weight once


def test_wsd_decay_fraction_and_the_warmup_bound():
    """decay_fraction sets the cooldown's length; a cooldown longer than the run after warmup
    starts when warmup ends (max(warmup, max_steps - decay_steps))."""
    at = lambda s, f: lr_at(s, schedule="wsd", peak_lr=1.0, warmup_steps=2, max_steps=12,  # noqa: E731
                            min_lr_ratio=0.2, decay_fraction=f)  # fmt: skip
    assert at(5, 0.5) == 1.0  # decay of 6 steps: 6..11
    assert at(6, 0.5) == pytest.approx(0.2 + 0.8 * (1 - math.sqrt(1 / 6)))
    assert at(11, 0.5) == pytest.approx(0.2)
    assert at(1, 0.9) == 1.0  # 11 decay steps would start at 1, inside warmup: 2..11
    assert at(2, 0.9) == pytest.approx(0.2 + 0.8 * (1 - math.sqrt(1 / 10)))


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = _Tiny()
    model.norm.requires_grad_(False)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    groups = {id(p) for g in (decay, no_decay) for p in g["params"]}
    assert id(model.norm.weight) not in groups and id(model.norm.bias) not in groups
    assert len(groups) == 3


def test_cpu_parameters_get_the_fused_adamw_with_the_for_loop_updates():
    """On a CPU the fused kernel is chosen, and twenty steps with a changing lr, weight decay on
    one group only and fresh gradients leave the weights the plain for-loop AdamW leaves."""
    torch.manual_seed(0)
    fused_model, loop_model = _Tiny(), _Tiny()
    loop_model.load_state_dict(fused_model.state_dict())
    start = {name: a.detach().clone() for name, a in fused_model.named_parameters()}
    fused = build_optimizer(fused_model, lr=1e-2)
    loop = build_optimizer(loop_model, lr=1e-2, fused=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for step in range(20):
        for model in (fused_model, loop_model):
            torch.manual_seed(step)
            model.zero_grad(set_to_none=True)
            model.head(
                model.norm(model.proj(model.embed(torch.arange(10))))
            ).square().sum().backward()
        for opt in (fused, loop):
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (step + 1) / 20
            opt.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters(), strict=True):
        assert (a - start[name]).abs().max() > 1e-3, name  # it moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_frozen_parameters_elsewhere_do_not_stop_the_fused_adamw():
    model = _Tiny()
    model.norm.to("meta").requires_grad_(False)  # not trained: not the optimizer's concern
    assert build_optimizer(model, lr=1e-3).defaults["fused"]


def test_fused_adamw_needs_one_device_type_that_has_it_and_floating_parameters():
    cpu = torch.zeros(2)
    assert fused_adamw_applies([cpu, torch.zeros(3, dtype=torch.float64)])
    assert not fused_adamw_applies([cpu, torch.zeros(2, device="meta")])
    assert not fused_adamw_applies([torch.zeros(2, device="meta")])
    assert not fused_adamw_applies([cpu, torch.zeros(2, dtype=torch.int64)])
