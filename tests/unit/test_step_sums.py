"""The step's sums in one vector: each value lands back in its own slot."""

from __future__ import annotations

import torch

from pretrain.train.step_sums import sum_over_ranks


def test_sums_come_back_in_their_slots_in_one_process():
    per_task = {"b": [torch.tensor(6.0), 4], "d": [torch.tensor(1.5), 1]}
    total, tokens, tasks, flops = sum_over_ranks(
        torch.tensor(7.5), 5, per_task, ("a", "b", "c", "d"), flops=3.0e12
    )
    assert (total, tokens, flops) == (7.5, 5, 3.0e12)
    assert tasks == {"b": [6.0, 4], "d": [1.5, 1]}  # tasks no rank drew are left out
