"""A step's loss sums and label counts, added up over data-parallel ranks in one all-reduce."""

from __future__ import annotations

import torch

from pretrain.distributed import comm


def sum_over_ranks(
    ce_sum: torch.Tensor,
    label_tokens: int,
    per_task: dict[str, list],
    task_names: tuple[str, ...],
    flops: float = 0.0,
) -> tuple[float, int, dict[str, list], float]:
    """The step's cross-entropy sum, label tokens, ``{task: [ce sum, label tokens]}`` (for
    the tasks some rank drew) and training FLOPs, each summed over all ranks.

    Args:
        ce_sum: this rank's cross-entropy sum over the step's micro-batches (a 0-d tensor).
        label_tokens: this rank's label tokens in the step.
        per_task: this rank's ``{task: [ce sum tensor, label tokens]}`` for the tasks it drew.
        task_names: the objective's whole list of tasks, the same on every rank.
        flops: this rank's training FLOPs in the step (ranks differ where masking does).

    Each task has fixed slots in one float64 vector ``[ce, ce per task..., flops, label
    tokens, (label tokens, drawn) per task...]``: float64 keeps the counts exact, one
    all-reduce sums everything, and no rank pickles a dictionary every step. In a single
    process nothing is communicated.
    """
    zero = ce_sum.new_zeros(())
    ces = [per_task.get(name, (zero, 0))[0].detach() for name in task_names]
    counts = [label_tokens]
    for name in task_names:
        counts += [per_task[name][1], 1] if name in per_task else [0, 0]
    flat = torch.cat(
        [
            torch.stack([ce_sum.detach(), *ces]).double(),
            torch.tensor([flops, *counts], dtype=torch.float64).to(ce_sum.device),
        ]
    )
    values = comm.all_reduce_sum(flat, flat.device).tolist()  # in one process: no exchange
    k = len(task_names)
    total, task_ces, all_flops, tokens = values[0], values[1 : k + 1], values[k + 1], values[k + 2]
    task_counts = values[k + 3 :]
    sums = {
        name: [task_ces[i], int(task_counts[2 * i])]
        for i, name in enumerate(task_names)
        if task_counts[2 * i + 1] > 0
    }
    return total, int(tokens), sums, all_flops
