"""The trainer's own counters, saved in every checkpoint's state.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps taken (skipped non-finite steps included: their data is consumed)."""
    tokens_seen: int = 0
    best_val_loss: float | None = None
    consecutive_nonfinite: int = 0
    num_skipped_steps: int = 0
    """Steps whose update was skipped: non-finite, or spikes."""
    num_spike_steps: int = 0
    """Of those, the steps skipped as spikes (``train.spike_sigma``)."""
    num_rollbacks: int = 0
    """Rollbacks to a checkpoint after spikes (``train.spike_rollback_after``); a rollback
    restores the other counters from the checkpoint but adds one here."""
    recent_spike_steps: list[int] = field(default_factory=list)
    """The steps skipped as spikes within the last ``train.spike_window_steps`` steps."""
    elapsed_seconds: float = 0.0
    last_eval_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
