"""When a run of loss spikes calls for a rollback, and what one leaves in the run directory
(``rollbacks.jsonl``); :meth:`pretrain.train.run_state.RunState.roll_back` carries it out.

With ``train.spike_rollback_after`` the trainer answers a run of spikes as PaLM did
(Chowdhery et al. 2022, §5.1: "we re-started training from a checkpoint roughly 100 steps
before the spike started, and skipped roughly 200-500 data batches, which cover the batches
that were seen before and during the spike"): it restores the latest checkpoint's weights,
optimizer state and counters but leaves the data loader where it is, so every batch drawn
since that checkpoint (the spiking ones included) is skipped. The undone steps' lines are
dropped from ``metrics.jsonl`` (one line per step and split, as after ``--resume``); each
rollback appends one line here instead, with the steps that spiked.

A run resumed from before a rollback replays the same steps on the same data, spikes at the
same steps and rolls back the same way (the spike window and the recent spikes are part of
the checkpoint), so its losses match an uninterrupted run's; its ``rollbacks.jsonl`` then has
that rollback twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.config import TrainConfig
from pretrain.train.errors import TrainingError
from pretrain.train.state import TrainState

ROLLBACKS_FILE = "rollbacks.jsonl"


def rollback_due(state: TrainState, step: int, train: TrainConfig) -> bool:
    """Whether ``train.spike_rollback_after`` of the spikes in ``state.recent_spike_steps``
    fall within the ``train.spike_window_steps`` steps up to ``step`` (older ones are
    forgotten here)."""
    first_in_window = step - train.spike_window_steps
    state.recent_spike_steps = [s for s in state.recent_spike_steps if s > first_in_window]
    after = train.spike_rollback_after
    return bool(after) and len(state.recent_spike_steps) >= after


def rollback_record(
    to_step: int, undone_step: int, undone_tokens: int, state: TrainState, spikes: list[int]
) -> dict[str, Any]:
    """The line of a rollback from ``undone_step`` (the last step taken, with
    ``undone_tokens`` trained on) to the checkpoint of ``to_step`` (``state`` restored)."""
    return {
        "step": to_step,
        "undone_step": undone_step,
        "spike_steps": spikes,
        "tokens_skipped": undone_tokens - state.tokens_seen,
        "rollback": state.num_rollbacks,
    }


def write_rollback_record(run_dir: Path, record: dict[str, Any], is_main: bool) -> None:
    if is_main:
        with open(run_dir / ROLLBACKS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def rollback_message(record: dict[str, Any], max_rollbacks: int) -> str:
    return (
        f"steps {record['spike_steps']} spiked: rolled back from step {record['undone_step']} "
        f"to the checkpoint of step {record['step']} (rollback {record['rollback']} of at most "
        f"{max_rollbacks}); the data goes on, so the {record['tokens_skipped']} tokens since "
        "are not trained on"
    )


def rollback_limit_error(done: int, spikes: list[int], step: int) -> TrainingError:
    return TrainingError(
        f"the loss spiked again after {done} rollbacks (train.max_rollbacks), spikes at steps "
        f"{spikes} up to step {step}; training stopped. Lower optim.lr, raise "
        "optim.warmup_steps or objective.z_loss, or raise train.spike_sigma"
    )
