"""The step's sums in one vector: each value lands back in its own slot, and the flag that
skips a non-finite update on the device agrees with the values read on the host."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.train.step_sums import sum_over_ranks


def test_sums_come_back_in_their_slots_in_one_process():
    per_task = {"b": [torch.tensor(6.0), 4], "d": [torch.tensor(1.5), 1]}
    sums = sum_over_ranks(
        torch.tensor(7.5),
        5,
        per_task,
        ("a", "b", "c", "d"),
        flops=3.0e12,
        deadline_vote=True,
        grad_norm=torch.tensor(0.25),
        router_sum=torch.tensor(0.125),
    ).result()
    assert (sums.ce_sum, sums.label_tokens, sums.flops, sums.grad_norm) == (7.5, 5, 3.0e12, 0.25)
    assert sums.router_sum == 0.125
    assert sums.tasks == {"b": [6.0, 4], "d": [1.5, 1]}  # tasks no rank drew are left out
    assert (sums.signal_votes, sums.deadline_votes) == (0, 1)
    assert sum_over_ranks(torch.tensor(0.0), 0, {}, (), signal_vote=True).result().signal_votes == 1


def test_two_ranks_add_up_slot_by_slot_and_keep_a_task_drawn_without_labels(monkeypatch):
    from pretrain.distributed import comm

    names = ("a", "b", "c", "d")
    vectors = []
    monkeypatch.setattr(comm, "all_reduce_sum", lambda flat, device: vectors.append(flat) or flat)
    sum_over_ranks(
        torch.tensor(2.0), 2, {"b": [torch.tensor(2.0), 2]}, names, flops=1.0,
        router_sum=torch.tensor(0.5),
    )  # fmt: skip
    rank1 = vectors[0].clone()
    # Rank 0 sees rank 1's vector added to its own, as the all-reduce would leave it.
    monkeypatch.setattr(comm, "all_reduce_sum", lambda flat, device: flat + rank1)
    per_task = {"b": [torch.tensor(6.0), 4], "d": [torch.tensor(0.0), 0]}  # d drawn, no labels
    norm = torch.tensor(3.0)  # the same on every rank: not summed
    pending = sum_over_ranks(
        torch.tensor(6.0), 4, per_task, names, flops=2.0, signal_vote=True, grad_norm=norm,
        router_sum=torch.tensor(0.25),
    )  # fmt: skip
    sums = pending.result()
    assert (sums.ce_sum, sums.label_tokens, sums.flops, sums.grad_norm) == (8.0, 6, 3.0, 3.0)
    assert sums.router_sum == 0.75
    assert sums.tasks == {"b": [8.0, 6], "d": [0.0, 0]}
    assert (sums.signal_votes, sums.deadline_votes) == (1, 0)


@pytest.mark.parametrize(
    ("ce_sum", "grad_norm", "nonfinite"),
    [
        (1.0, 2.0, 0.0),
        (float("nan"), 2.0, 1.0),
        (float("inf"), 2.0, 1.0),
        (1.0, float("inf"), 1.0),
        (1.0, float("nan"), 1.0),
        (3.0e38, 2.0, 0.0),  # large but finite in fp32
    ],
)
def test_the_device_flag_marks_a_non_finite_loss_or_gradient_norm(ce_sum, grad_norm, nonfinite):
    pending = sum_over_ranks(torch.tensor(ce_sum), 1, {}, (), grad_norm=torch.tensor(grad_norm))
    assert pending.skip.dtype == torch.float32 and pending.skip.dim() == 0
    assert pending.skip.item() == nonfinite
    sums = pending.result()
    assert (math.isfinite(sums.ce_sum) and math.isfinite(sums.grad_norm)) == (nonfinite == 0.0)


def test_the_spike_check_sees_the_mean_loss_and_its_answer_comes_back():
    """The detector gets the step's loss per label token (the ce sum over the label count
    slot, past the task slots) and its gradient norm; a spike sets the device flag."""
    from pretrain.train.loss_spikes import SpikeDetector

    spikes = SpikeDetector(6.0, window=8, device="cpu")
    for i in range(8):
        spikes.check(torch.tensor(3.0 + 0.01 * (i % 2)), torch.tensor(1.0))
    tasks = {"a": [torch.tensor(120.0), 40]}

    def step(ce_sum: float, grad_norm: float):
        pending = sum_over_ranks(
            torch.tensor(ce_sum), 100, tasks, ("a", "b"), grad_norm=torch.tensor(grad_norm),
            spikes=spikes,
        )  # fmt: skip
        return pending.skip.item(), pending.result().spike

    assert step(300.5, 1.0) == (0.0, False)  # a mean loss of 3.005
    assert step(400.0, 1.0) == (1.0, True)
    assert step(300.0, 3.0) == (1.0, True)
    assert step(float("nan"), 1.0) == (1.0, False)  # skipped as non-finite, not as a spike


@pytest.mark.parametrize(
    ("here", "other_rank", "spike"),
    [((1000.0, 100), (2000.0, 900), False), ((300.0, 100), (3700.0, 900), True)],
)
def test_the_spike_check_sees_the_loss_of_all_ranks(here, other_rank, spike, monkeypatch):
    """Another rank's sums join this rank's before the check, so every rank decides from the
    same loss: 10 here alone but 3.0 over both ranks is no spike; 3.0 here but 4.0 over both
    is one (the window holds losses of 3.00-3.01)."""
    from pretrain.distributed import comm
    from pretrain.train.loss_spikes import SpikeDetector

    spikes = SpikeDetector(6.0, window=8, device="cpu")
    for i in range(8):
        spikes.check(torch.tensor(3.0 + 0.01 * (i % 2)), torch.tensor(1.0))
    other = torch.zeros(6, dtype=torch.float64)
    other[0], other[5] = other_rank  # the slots of the ce sum and the label tokens
    monkeypatch.setattr(comm, "all_reduce_sum", lambda t, device: t + other)
    ce_sum, label_tokens = here
    pending = sum_over_ranks(
        torch.tensor(ce_sum), label_tokens, {}, (), grad_norm=torch.tensor(1.0), spikes=spikes
    )
    assert pending.result().label_tokens == 1000
    assert pending.result().spike == spike
