"""The spike detector against a plain reference: which steps it calls spikes, what it keeps."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch

from pretrain.train.loss_spikes import SpikeDetector


def reference_spikes(steps: list[tuple[float, float]], sigma: float, window: int) -> list[bool]:
    """A step spikes where its loss or gradient norm exceeds the mean of the finite values of
    the last ``window`` steps by more than ``sigma`` sample standard deviations, once at least
    ``max(2, window // 2)`` of those are finite; a non-finite step never does."""
    decisions = []
    for i, (loss, grad_norm) in enumerate(steps):
        earlier = [s for s in steps[max(0, i - window) : i] if all(map(math.isfinite, s))]
        spike = False
        if len(earlier) >= max(2, window // 2) and math.isfinite(loss + grad_norm):
            for k, value in enumerate((loss, grad_norm)):
                series = [s[k] for s in earlier]
                mean, std = statistics.fmean(series), statistics.stdev(series)
                spike |= value - mean > sigma * std
        decisions.append(spike)
    return decisions


def run(detector: SpikeDetector, steps: list[tuple[float, float]]) -> list[bool]:
    return [
        bool(detector.check(torch.tensor(loss), torch.tensor(grad_norm)))
        for loss, grad_norm in steps
    ]


def noisy_steps(rng: random.Random, count: int) -> list[tuple[float, float]]:
    """Losses near 3 and gradient norms near 1, with spikes in either and non-finite steps."""
    steps = []
    for _ in range(count):
        loss, grad_norm = rng.gauss(3.0, 0.05), abs(rng.gauss(1.0, 0.1))
        draw = rng.random()
        if draw < 0.04:
            loss += rng.choice([0.3, 1.0, 5.0])
        elif draw < 0.08:
            grad_norm *= rng.choice([2.0, 10.0])
        elif draw < 0.10:
            loss = rng.choice([math.nan, math.inf])
        elif draw < 0.12:
            grad_norm = math.inf
        steps.append((loss, grad_norm))
    return steps


@pytest.mark.parametrize("sigma, window", [(6.0, 16), (3.0, 10), (2.0, 7)])
def test_decisions_match_the_reference_over_a_long_run(sigma, window):
    steps = noisy_steps(random.Random(window), 300)  # the window wraps many times
    expected = reference_spikes(steps, sigma, window)
    assert run(SpikeDetector(sigma, window, "cpu"), steps) == expected
    assert 5 < sum(expected) < 60  # the run does exercise both answers


def test_nothing_is_a_spike_before_half_the_window_is_filled():
    detector = SpikeDetector(3.0, window=8, device="cpu")
    steps = [(3.0 + 0.01 * (i % 2), 1.0) for i in range(4)] + [(100.0, 1.0), (100.0, 1.0)]
    assert run(detector, steps) == [False, False, False, False, True, False]
    # the first 100 joined the window: one such value is within 3 deviations of the next


def test_a_gradient_norm_spike_alone_is_a_spike():
    detector = SpikeDetector(6.0, window=16, device="cpu")
    calm = [(3.0 + 0.01 * math.sin(i), 1.0 + 0.01 * math.cos(i)) for i in range(16)]
    run(detector, calm)
    assert run(detector, [(3.0, 5.0), (3.0, 1.0)]) == [True, False]
    assert not run(detector, [(2.0, 0.2)])[0]  # a drop is never a spike


def test_a_lasting_change_of_level_stops_being_skipped():
    """Skipped values join the window, so a new level is accepted after some steps."""
    rng = random.Random(0)
    detector = SpikeDetector(6.0, window=32, device="cpu")
    run(detector, [(rng.gauss(3.0, 0.02), 1.0) for _ in range(64)])
    after = run(detector, [(rng.gauss(3.5, 0.02), 1.0) for _ in range(32)])
    assert after[0] and not any(after[8:])


def test_a_non_finite_step_neither_spikes_nor_enters_the_window():
    detector = SpikeDetector(6.0, window=16, device="cpu")
    calm = [(3.0 + 0.01 * (i % 3), 1.0) for i in range(15)]
    run(detector, calm)
    assert run(detector, [(math.nan, 1.0), (3.0, math.inf)]) == [False, False]
    assert detector.filled.sum() == 14  # 15 calm, one evicted, the two not kept
    assert torch.isfinite(detector.values).all()
    assert run(detector, [(3.5, 1.0)]) == [True]  # the window's statistics still work


def test_a_restored_window_decides_as_the_original_does():
    steps = noisy_steps(random.Random(1), 120)
    original = SpikeDetector(4.0, window=20, device="cpu")
    run(original, steps[:50])
    restored = SpikeDetector(4.0, window=20, device="cpu")
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))  # as state.json
    later = steps[50:]
    fresh = run(SpikeDetector(4.0, window=20, device="cpu"), later)
    decisions = run(restored, later)
    assert decisions == run(original, later)
    assert decisions != fresh  # the window carried over decides some steps


def test_a_window_of_another_size_is_refused():
    saved = SpikeDetector(6.0, window=16, device="cpu").state_dict()
    with pytest.raises(ValueError, match="train.spike_window_steps is 32"):
        SpikeDetector(6.0, window=32, device="cpu").load_state_dict(saved)


@pytest.mark.parametrize("sigma, window", [(0.0, 16), (-1.0, 16), (6.0, 1)])
def test_bad_settings_are_refused(sigma, window):
    with pytest.raises(ValueError):
        SpikeDetector(sigma, window, "cpu")
