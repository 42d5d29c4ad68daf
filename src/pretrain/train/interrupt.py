"""Ctrl-C during training: finish the step, write a checkpoint, then stop.

A ``KeyboardInterrupt`` raised wherever the loop happens to be (inside the optimizer's update,
say) leaves nothing consistent to save, so everything since the last checkpoint would be lost.
:class:`StopOnInterrupt` turns the first SIGINT into a request the loop reads between steps;
the trainer then saves and raises :class:`TrainingInterrupted`. A second Ctrl-C stops at once.

Only a single process does this. Under ``torchrun`` every rank gets the signal at a slightly
different point of its step, and agreeing on where to stop would cost a collective every step;
there the interrupt stops the ranks as before and ``--resume`` continues from the last
checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a checkpoint; the message says how to go on."""


class StopOnInterrupt:
    """``with StopOnInterrupt(enabled) as stop:`` ... ``if stop.requested: ...``."""

    def __init__(self, enabled: bool = True) -> None:
        # Signal handlers can only be set from the main thread.
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopOnInterrupt:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: stopping after this step with a checkpoint (Ctrl-C again to stop "
                    "now, losing what the last checkpoint does not hold)")  # fmt: skip

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
