"""The step's sums in one vector: each value lands back in its own slot."""

from __future__ import annotations

import torch

from pretrain.train.step_sums import sum_over_ranks


def test_sums_come_back_in_their_slots_in_one_process():
    per_task = {"b": [torch.tensor(6.0), 4], "d": [torch.tensor(1.5), 1]}
    sums = sum_over_ranks(
        torch.tensor(7.5), 5, per_task, ("a", "b", "c", "d"), flops=3.0e12, deadline_vote=True
    )
    assert (sums.ce_sum, sums.label_tokens, sums.flops) == (7.5, 5, 3.0e12)
    assert sums.tasks == {"b": [6.0, 4], "d": [1.5, 1]}  # tasks no rank drew are left out
    assert (sums.signal_votes, sums.deadline_votes) == (0, 1)
    assert sum_over_ranks(torch.tensor(0.0), 0, {}, (), signal_vote=True).signal_votes == 1


def test_two_ranks_add_up_slot_by_slot_and_keep_a_task_drawn_without_labels(monkeypatch):
    from pretrain.distributed import comm

    names = ("a", "b", "c", "d")
    vectors = []
    monkeypatch.setattr(comm, "all_reduce_sum", lambda flat, device: vectors.append(flat) or flat)
    sum_over_ranks(torch.tensor(2.0), 2, {"b": [torch.tensor(2.0), 2]}, names, flops=1.0)
    rank1 = vectors[0].clone()
    # Rank 0 sees rank 1's vector added to its own, as the all-reduce would leave it.
    monkeypatch.setattr(comm, "all_reduce_sum", lambda flat, device: flat + rank1)
    per_task = {"b": [torch.tensor(6.0), 4], "d": [torch.tensor(0.0), 0]}  # d drawn, no labels
    sums = sum_over_ranks(torch.tensor(6.0), 4, per_task, names, flops=2.0, signal_vote=True)
    assert (sums.ce_sum, sums.label_tokens, sums.flops) == (8.0, 6, 3.0)
    assert sums.tasks == {"b": [8.0, 6], "d": [0.0, 0]}
    assert (sums.signal_votes, sums.deadline_votes) == (1, 0)
