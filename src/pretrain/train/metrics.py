"""metrics.jsonl (always) and TensorBoard (when installed), written on rank 0."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends one JSON object per line; on resume, drops lines past the checkpoint's step.

    A run killed after step 130 whose last checkpoint is step 100 logged steps 101..130 that the
    resumed run will log again; truncating keeps exactly one line per (step, split).
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            self._keep_until(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self._tb = _tensorboard(run_dir / "tb") if tensorboard else None

    def _keep_until(self, step: int) -> None:
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and _step_of(line) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def drop_after(self, step: int) -> None:
        """Drop the lines past ``step``: a rollback to its checkpoint undid those steps."""
        self._file.close()
        self._keep_until(step)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            split = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "split"):
                    self._tb.add_scalar(f"{split}/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62  # a torn last line from a killed process: drop it


def _tensorboard(directory: Path):
    if os.environ.get("PRETRAIN_NO_TENSORBOARD"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(directory))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class NoMetrics:
    """What ranks other than 0 write metrics to: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def drop_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass
