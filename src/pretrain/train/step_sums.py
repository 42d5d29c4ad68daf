"""A step's loss sums and label counts, added up over data-parallel ranks in one all-reduce."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pretrain.distributed import comm


class StepSums(NamedTuple):
    """A step's values summed over all ranks."""

    ce_sum: float
    label_tokens: int
    tasks: dict[str, list]  # {task: [ce sum, label tokens]} for the tasks some rank drew
    flops: float
    signal_votes: int  # ranks that received a stop signal (SIGINT, SIGTERM)
    deadline_votes: int  # ranks whose clock passed train.max_minutes


def sum_over_ranks(
    ce_sum: torch.Tensor,
    label_tokens: int,
    per_task: dict[str, list],
    task_names: tuple[str, ...],
    flops: float = 0.0,
    signal_vote: bool = False,
    deadline_vote: bool = False,
) -> StepSums:
    """The step's cross-entropy sum, label tokens, ``{task: [ce sum, label tokens]}`` (for
    the tasks some rank drew), training FLOPs and votes to stop, each summed over all ranks.

    Args:
        ce_sum: this rank's cross-entropy sum over the step's micro-batches (a 0-d tensor).
        label_tokens: this rank's label tokens in the step.
        per_task: this rank's ``{task: [ce sum tensor, label tokens]}`` for the tasks it drew.
        task_names: the objective's whole list of tasks, the same on every rank.
        flops: this rank's training FLOPs in the step (ranks differ where masking does).
        signal_vote: this rank received SIGINT or SIGTERM (:mod:`pretrain.train.interrupt`).
        deadline_vote: this rank's clock says the run is out of time.

    Each task has fixed slots in one float64 vector ``[ce, ce per task..., flops, signal
    votes, deadline votes, label tokens, (label tokens, drawn) per task...]``: float64 keeps
    the counts exact, one all-reduce sums everything, and no rank pickles a dictionary every
    step. Every rank reads the same sums, so a vote from any rank stops all of them after
    the same step. In a single process nothing is communicated.
    """
    zero = ce_sum.new_zeros(())
    ces = [per_task.get(name, (zero, 0))[0].detach() for name in task_names]
    counts = [label_tokens]
    for name in task_names:
        counts += [per_task[name][1], 1] if name in per_task else [0, 0]
    host_values = torch.tensor([flops, signal_vote, deadline_vote, *counts], dtype=torch.float64)
    flat = torch.cat([torch.stack([ce_sum.detach(), *ces]).double(), host_values.to(ce_sum.device)])
    values = comm.all_reduce_sum(flat, flat.device).tolist()  # in one process: no exchange
    k = len(task_names)
    total, task_ces = values[0], values[1 : k + 1]
    all_flops, signals, deadlines, tokens = values[k + 1 : k + 5]
    task_counts = values[k + 5 :]
    sums = {
        name: [task_ces[i], int(task_counts[2 * i])]
        for i, name in enumerate(task_names)
        if task_counts[2 * i + 1] > 0
    }
    return StepSums(total, int(tokens), sums, all_flops, int(signals), int(deadlines))
