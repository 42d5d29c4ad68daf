"""A step's loss sums and label counts, added up over data-parallel ranks in one all-reduce,
and brought to the host without stopping the device.

The trainer reads a step's sums only after it has queued the next step
(:meth:`pretrain.train.trainer.Trainer.fit`): reading them at once would make the host wait
for the step to finish, and the device would then wait, idle, for the host to queue the next
one. So :func:`sum_over_ranks` starts a copy to pinned host memory and returns; the values are
read by :meth:`PendingSums.result`, which waits for that copy only. Whether the step's update is
skipped (a non-finite loss or gradient, or a spike: :mod:`pretrain.train.loss_spikes`) is
decided on the device (:attr:`PendingSums.skip`), as PyTorch's ``GradScaler`` decides for its
fused optimizers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pretrain.distributed import comm
from pretrain.train.loss_spikes import SpikeDetector


class StepSums(NamedTuple):
    """A step's values summed over all ranks."""

    ce_sum: float
    label_tokens: int
    tasks: dict[str, list]  # {task: [ce sum, label tokens]} for the tasks some rank drew
    flops: float
    signal_votes: int  # ranks that received a stop signal (SIGINT, SIGTERM)
    deadline_votes: int  # ranks whose clock passed train.max_minutes
    grad_norm: float  # the gradients' total norm, before clipping (the same on every rank)
    spike: bool = False  # the loss or the gradient norm spiked (the update was skipped)
    router_sum: float = 0.0  # a mixture of experts' weighted balancing loss x label tokens


class PendingSums:
    """The step's summed values on their way to the host.

    Args:
        reduced: the all-reduced float64 vector (:func:`sum_over_ranks` lays out its slots).
        grad_norm: the gradient norm, the same on every rank, so not summed.
        task_names: the objective's tasks, in their slot order.
        spike: 1.0 where the step spiked, else 0.0 (a 0-d tensor; None: no spike check).
    """

    def __init__(
        self,
        reduced: torch.Tensor,
        grad_norm: torch.Tensor,
        task_names: tuple,
        spike: torch.Tensor | None = None,
    ):
        spike = reduced.new_zeros(()) if spike is None else spike
        readout = torch.cat([reduced, grad_norm.detach().reshape(1).to(reduced), spike.reshape(1)])
        self.task_names = task_names
        # readout[0] and readout[-2] as views: a list index would be copied to the device
        finite = torch.isfinite(readout[0]) & torch.isfinite(readout[-2])
        self.skip = ((~finite) | (readout[-1] > 0)).to(torch.float32)
        """1.0 where the summed loss or the gradient norm is not finite or the step spiked,
        else 0.0: a tensor on the device, for an optimizer that skips its update there
        (``found_inf``)."""
        self._ready: torch.cuda.Event | None = None
        if readout.device.type == "cuda":  # a queued copy; result() waits for it alone
            host = torch.empty(readout.shape, dtype=readout.dtype, pin_memory=True)
            self._readout = host.copy_(readout, non_blocking=True)
            self._ready = torch.cuda.Event()
            # on the stream of the copy's device, not the current device's (cuda:1 alone
            # in a process does not make cuda:1 the current device)
            self._ready.record(torch.cuda.current_stream(readout.device))
        else:
            self._readout = readout
        self._result: StepSums | None = None

    def result(self) -> StepSums:
        """The values, once the device has computed them (waits for that, not for later work)."""
        if self._result is None:
            if self._ready is not None:
                self._ready.synchronize()
            self._result = _unpack(self._readout.tolist(), self.task_names)
        return self._result


def sum_over_ranks(
    ce_sum: torch.Tensor,
    label_tokens: int,
    per_task: dict[str, list],
    task_names: tuple[str, ...],
    flops: float = 0.0,
    signal_vote: bool = False,
    deadline_vote: bool = False,
    grad_norm: torch.Tensor | None = None,
    spikes: SpikeDetector | None = None,
    router_sum: torch.Tensor | None = None,
    counts: bool = True,
) -> PendingSums:
    """The step's cross-entropy sum, label tokens, ``{task: [ce sum, label tokens]}`` (for
    the tasks some rank drew), training FLOPs and votes to stop, each summed over all ranks,
    with the gradient norm beside them; :meth:`PendingSums.result` reads them.

    Args:
        ce_sum: this rank's cross-entropy sum over the step's micro-batches (a 0-d tensor).
        label_tokens: this rank's label tokens in the step.
        per_task: this rank's ``{task: [ce sum tensor, label tokens]}`` for the tasks it drew.
        task_names: the objective's whole list of tasks, the same on every rank.
        flops: this rank's training FLOPs in the step (ranks differ where masking does).
        signal_vote: this rank received SIGINT or SIGTERM (:mod:`pretrain.train.interrupt`).
        deadline_vote: this rank's clock says the run is out of time.
        grad_norm: the step's gradient norm (a 0-d tensor), default 0.
        spikes: checks the step's mean loss and gradient norm for a spike (and records them).
        router_sum: a mixture of experts' load-balancing loss, times its label tokens, summed
            over the step's micro-batches (a 0-d tensor), default 0.
        counts: False leaves this rank's sums and FLOPs out (its votes still count): a
            tensor-parallel group's peers of its first rank, which computed the same batches.

    Each task has fixed slots in one float64 vector ``[ce, ce per task..., router loss, flops,
    signal votes, deadline votes, label tokens, (label tokens, drawn) per task...]``: float64 keeps
    the counts exact, one all-reduce sums everything, and no rank pickles a dictionary every
    step. Every rank reads the same sums, so a vote from any rank stops all of them after
    the same step. In a single process nothing is communicated. The host's numbers reach the
    device by a queued copy from pinned memory: an ordinary copy to CUDA waits for all the
    work queued before it.
    """
    zero = ce_sum.new_zeros(())
    if not counts:
        ce_sum, label_tokens, per_task, flops, router_sum = zero, 0, {}, 0.0, None
    ces = [per_task.get(name, (zero, 0))[0].detach() for name in task_names]
    counts = [label_tokens]
    for name in task_names:
        counts += [per_task[name][1], 1] if name in per_task else [0, 0]
    host_values = torch.tensor([flops, signal_vote, deadline_vote, *counts], dtype=torch.float64)
    if ce_sum.device.type == "cuda":
        host_values = host_values.pin_memory()
    on_device = host_values.to(ce_sum.device, non_blocking=True)
    router_sum = zero if router_sum is None else router_sum.detach()
    flat = torch.cat([torch.stack([ce_sum.detach(), *ces, router_sum]).double(), on_device])
    reduced = comm.all_reduce_sum(flat, flat.device)  # in one process: no exchange
    grad_norm = zero if grad_norm is None else grad_norm
    spike = None
    if spikes is not None:  # every rank holds the same sums, so decides the same
        mean_loss = reduced[0] / reduced[len(task_names) + 5].clamp(min=1)
        spike = spikes.check(mean_loss, grad_norm)
    return PendingSums(reduced, grad_norm, task_names, spike)


def _unpack(values: list[float], task_names: tuple[str, ...]) -> StepSums:
    k = len(task_names)
    total, task_ces, router = values[0], values[1 : k + 1], values[k + 1]
    all_flops, signals, deadlines, tokens = values[k + 2 : k + 6]
    task_counts = values[k + 6 : -2]
    sums = {
        name: [task_ces[i], int(task_counts[2 * i])]
        for i, name in enumerate(task_names)
        if task_counts[2 * i + 1] > 0
    }
    return StepSums(
        total,
        int(tokens),
        sums,
        all_flops,
        int(signals),
        int(deadlines),
        grad_norm=values[-2],
        spike=values[-1] > 0,
        router_sum=router,
    )
