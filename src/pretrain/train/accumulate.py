"""One step's micro-batches: forward, loss and backward, the loss normalized over the step.

Loss normalization (DESIGN.md §3): each micro-batch's loss *sum* is divided by the number of
label tokens of the whole step, so every label token weighs the same however the tokens are
spread over micro-batches (torchtitan's ``global_valid_tokens``).

Data parallel (``torchrun --nproc_per_node=N -m pretrain train ... --distributed.strategy=ddp``
or ``fsdp``; see docs/scaling-out.md): each rank reads its own stride of the samples, runs
``grad_accum / N`` micro-batches without synchronizing gradients but on the last, and divides
its loss sum by the label count summed over micro-batches *and ranks* (all-reduced before
backward), times N because the gradient reduction averages over ranks. So N ranks compute the
update one process computes with N times the accumulation. With tensor parallelism
(``distributed.tensor_parallel_degree`` T) N counts the data-parallel ranks, WORLD_SIZE / T: a
group of T ranks reads one stride and computes each forward together, and only its first rank
adds its label count to the sum over ranks. With context parallelism
(``distributed.context_parallel_degree`` C) the C ranks of a group read one stride too, each
holding 1/C of every sequence (:mod:`pretrain.distributed.context_parallel`): each adds the
labels of its positions, and the gradients are averaged over N * C ranks. With pipeline
parallelism (``distributed.pipeline_parallel_degree``) the micro-batches run through the
stages on a schedule (:func:`pipeline_gradients`), normalized the same way; a pipeline's last
stage counts for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretrain.distributed import comm
from pretrain.distributed.env import DistEnv
from pretrain.distributed.parallelize import gradient_sync
from pretrain.distributed.pipeline_parallel import Pipeline
from pretrain.objectives.base import ModelBatch
from pretrain.train.loss_module import ModelWithLoss


@dataclass
class StepLosses:
    """This rank's sums over the step's micro-batches (before any sum over ranks)."""

    ce_sum: torch.Tensor  # cross-entropy summed over label tokens (0-d, on the device)
    router_sum: torch.Tensor  # a mixture of experts' balancing loss times its label tokens
    per_task: dict[str, list]  # task -> [ce sum tensor, label tokens], for the tasks drawn
    label_tokens: int

    @classmethod
    def empty(cls, device: torch.device, label_tokens: int) -> StepLosses:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device), {}, label_tokens)

    def add(self, ce: torch.Tensor, tasks: dict[str, tuple[torch.Tensor, int]], router) -> None:
        """One micro-batch's sums (:meth:`~pretrain.train.loss_module.ModelWithLoss.loss`)."""
        self.ce_sum += ce
        self.router_sum += router
        for name, (task_ce, count) in tasks.items():
            sums = self.per_task.setdefault(name, [torch.zeros_like(task_ce), 0])
            sums[0] += task_ce
            sums[1] += count


def _label_tokens(
    batches: list[ModelBatch], device: torch.device, dist: DistEnv
) -> tuple[int, torch.Tensor | int]:
    """This rank's label tokens in the step, and the step's on all ranks (the divisor)."""
    local_labels = sum(b.num_label_tokens for b in batches)
    divisor = max(local_labels, 1)
    if dist.world_size > 1:  # the step's label tokens on all ranks, before any backward:
        # summed on the device, so the host queues the forward without waiting for it
        divisor = comm.all_reduce_sum(local_labels if dist.counts_data else 0, device)
        divisor = divisor.clamp(min=1)
    return local_labels, divisor


def accumulate_gradients(
    train_module: nn.Module, batches: list[ModelBatch], device: torch.device, dist: DistEnv
) -> StepLosses:
    """Forward and backward ``batches`` (one step's micro-batches, on the host) through
    ``train_module`` (the trainer's :class:`~pretrain.train.loss_module.ModelWithLoss`, maybe
    wrapped by DDP or FSDP), leaving the step's gradients in the parameters."""
    local_labels, divisor = _label_tokens(batches, device, dist)
    losses = StepLosses.empty(device, local_labels)
    for i, cpu_batch in enumerate(batches):
        groups = cpu_batch.loss_groups(device)
        batch = cpu_batch.to(device)
        with gradient_sync(train_module, i == len(batches) - 1):
            total, ce, tasks, router = train_module(batch, groups)
            # DDP and FSDP average gradients over the data- (and context-) parallel ranks;
            # `* dp_cp_size` turns that into the sum.
            (total / divisor * dist.dp_cp_size).backward()
        losses.add(ce, tasks, router)
    return losses


def pipeline_gradients(
    pipeline: Pipeline,
    loss_module: ModelWithLoss,
    batches: list[ModelBatch],
    device: torch.device,
    dist: DistEnv,
) -> StepLosses:
    """:func:`accumulate_gradients` through a pipeline's stages: ``batches`` are its
    micro-batches, each micro-batch's loss is divided by the same count (the last stage
    computes the losses; the sums of the other stages stay zero)."""
    local_labels, divisor = _label_tokens(batches, device, dist)
    losses = StepLosses.empty(device, local_labels)
    if pipeline.last:  # the schedule calls the loss there only
        labels = [b.labels.to(device) for b in batches]
        groups = [b.loss_groups(device) for b in batches]

    def micro_batch_loss(hidden: torch.Tensor, i: int) -> torch.Tensor:
        total, ce, tasks, router = loss_module.loss(hidden, labels[i], groups[i])
        losses.add(ce, tasks, router)
        return total / divisor * dist.dp_cp_size  # as in accumulate_gradients

    pipeline.step(batches, micro_batch_loss)
    return losses
