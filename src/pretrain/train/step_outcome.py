"""What became of a queued optimizer step: read its sums, count a skipped update, log it.

A step is queued on the device (:meth:`~pretrain.train.trainer.Trainer.queue_step`) and read
later (:mod:`pretrain.train.step_sums`); its update was taken only where its loss and gradient
norm are finite and, with ``train.spike_sigma``, neither spiked
(:mod:`pretrain.train.loss_spikes`). Reading it here counts what was skipped, stops a run
that diverged, and makes the record ``metrics.jsonl`` logs.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

from pretrain.config import TrainConfig
from pretrain.eval.perplexity import task_losses
from pretrain.train.errors import TrainingError
from pretrain.train.rollback import rollback_due
from pretrain.train.state import TrainState
from pretrain.train.step_sums import PendingSums, StepSums

log = logging.getLogger(__name__)


class QueuedStep(NamedTuple):
    """An optimizer step queued on the device."""

    step: int  # the step number once it is taken (1 for the first)
    tokens_seen: int  # tokens trained on up to and including this step
    lr: float
    step_tokens: int
    sums: PendingSums  # its loss, gradient norm and votes, read by result()


def is_finite(sums: StepSums) -> bool:
    """Whether a step's summed loss and its gradient norm are finite (else it is skipped)."""
    return math.isfinite(sums.ce_sum) and math.isfinite(sums.grad_norm)


def is_applied(sums: StepSums) -> bool:
    """Whether a step's update is taken: finite, and no spike."""
    return is_finite(sums) and not sums.spike


def read_step(queued: QueuedStep, state: TrainState, train: TrainConfig) -> dict[str, Any]:
    """Read a queued step's values into ``state``'s counters; returns what to log, and
    whether ``train.spike_rollback_after`` spikes fell within the window (``rollback_due``).

    Raises :class:`TrainingError` after ``train.max_nonfinite_steps`` non-finite steps in a
    row."""
    sums = queued.sums.result()
    loss = sums.ce_sum / max(sums.label_tokens, 1)
    if not is_finite(sums):
        _count_nonfinite(queued.step, loss, sums.grad_norm, state, train.max_nonfinite_steps)
    else:
        state.consecutive_nonfinite = 0
        if sums.spike:
            state.num_skipped_steps += 1
            state.num_spike_steps += 1
            state.recent_spike_steps.append(queued.step)
            log.warning(
                "step %d: the loss %.4f or the gradient norm %.4g lies more than %g standard "
                "deviations above the mean of the last %d steps; the update is skipped",
                queued.step,
                loss,
                sums.grad_norm,
                train.spike_sigma,
                train.spike_window_steps,
            )
    return {
        "loss": loss,
        "lr": queued.lr,
        "grad_norm": sums.grad_norm,
        "step_tokens": queued.step_tokens,
        "step_flops": sums.flops,
        "skipped": not is_applied(sums),
        "tasks": task_losses(sums.tasks),
        "router_loss": sums.router_sum / max(sums.label_tokens, 1),
        "stop_signal": sums.signal_votes > 0,
        "out_of_time": sums.deadline_votes > 0,
        "rollback_due": rollback_due(state, queued.step, train),
    }


def _count_nonfinite(step: int, loss: float, grad_norm: float, state: TrainState, limit: int):
    state.consecutive_nonfinite += 1
    state.num_skipped_steps += 1
    log.warning(
        "step %d: non-finite loss %s or gradient norm %s; the update is skipped (%d in a row)",
        step,
        loss,
        grad_norm,
        state.consecutive_nonfinite,
    )
    if state.consecutive_nonfinite >= limit:
        raise TrainingError(
            f"the loss or gradients were non-finite for {limit} steps in a row (last at step "
            f"{step}); training stopped. Lower optim.lr, raise "
            "optim.warmup_steps, set objective.z_loss=1e-4, or resume from an earlier "
            "checkpoint"
        )


def train_record(
    queued: QueuedStep,
    read: dict[str, Any],
    state: TrainState,
    tokens_per_second: float,
    mfu: float | None,
    logs_spikes: bool,
) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of a logged training step (``read``: :func:`read_step`'s)."""
    return {
        "step": queued.step,
        "split": "train",
        "loss": read["loss"],
        "lr": read["lr"],
        "tokens": queued.tokens_seen,
        "grad_norm": read["grad_norm"],
        "tokens_per_second": tokens_per_second,
        "mfu": mfu,
        "skipped_steps": state.num_skipped_steps,
        **({"spike_steps": state.num_spike_steps} if logs_spikes else {}),
        **({"rollbacks": state.num_rollbacks} if logs_spikes else {}),
        **({"tasks": read["tasks"]} if read.get("tasks") else {}),
        **({"router_loss": read["router_loss"]} if read.get("router_loss") else {}),
    }
