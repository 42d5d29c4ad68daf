"""Ctrl-C or SIGTERM during training: finish the step, write a checkpoint, then stop.

A ``KeyboardInterrupt`` raised wherever the loop happens to be (inside the optimizer's update,
say) leaves nothing consistent to save, and SIGTERM (a scheduler preempting the job: Slurm,
Kubernetes, ``timeout``) kills the process outright, so everything since the last checkpoint
would be lost. :class:`StopOnSignal` turns the first SIGINT or SIGTERM into a request the loop
reads between steps; the trainer then saves and raises :class:`TrainingInterrupted`. A second
signal stops at once. The request travels with a step's loss sums, which the trainer reads once
the next step is queued, so training stops after the step that follows the signal's.

Under ``torchrun`` every rank gets the signal at a slightly different point of its step, and
some ranks may not get it at all. Each rank therefore votes in the all-reduce the step already
makes for its loss sums (:func:`pretrain.train.step_sums.sum_over_ranks`), and all ranks stop
after the same step, so the checkpoint's collectives line up (Megatron-LM's
``--exit-signal-handler`` gathers a flag from every rank each iteration for the same reason).
torchrun forwards the signal it gets to its workers and kills them ``--shutdown_timeout``
seconds later (30 by default): the time left to finish two steps and save. A terminal's Ctrl-C
reaches a worker twice (from the terminal and from torchrun), so a repeat within
:data:`REPEAT_WINDOW_SECONDS` is the same request.

torchrun starts each worker in a session of its own, so a launcher killed outright (SIGKILL,
an OOM kill) forwards nothing: its workers would train on with nobody to collect them (and a
second run resumed into the same directory would share it with them). Under torchrun a worker
therefore also counts its launcher's death, seen as a new parent process, as a request to stop:
it saves and exits like on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_WINDOW_SECONDS = 1.0
LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"
"""Set by torchrun in its workers' environment: their parent is the launcher."""
LAUNCHER_GONE = "the exit of its torchrun launcher"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; the message says how to go on.

    ``exit_code`` is the shell's for that signal, ``128 + signal number`` (130 for SIGINT,
    143 for SIGTERM), so a scheduler sees which one stopped the run."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)


class StopOnSignal:
    """``with StopOnSignal() as stop:`` ... ``if stop.requested: ...``; ``stop.signal_name``
    is the first signal's name (or :data:`LAUNCHER_GONE`).

    Args:
        enabled: set the signal handlers (only possible from the main thread).
        watch_launcher: also request a stop once the parent process is gone; None: where
            torchrun launched this process (:data:`LAUNCHER_ENV`).
    """

    def __init__(self, enabled: bool = True, watch_launcher: bool | None = None) -> None:
        # Signal handlers can only be set from the main thread.
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        if watch_launcher is None:
            watch_launcher = bool(os.environ.get(LAUNCHER_ENV))
        self._launcher = os.getppid() if watch_launcher else None
        self._requested = False
        self.signal_name = ""
        self.signal_number = 0
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """A signal came, or the launcher is gone (one ``getppid`` call: no wait)."""
        if not self._requested and self._launcher is not None and os.getppid() != self._launcher:
            self._requested = True
            self.signal_name, self.signal_number = LAUNCHER_GONE, signal.SIGTERM
            log.warning("the torchrun launcher (pid %d) is gone: stopping after this step with "
                        "a checkpoint", self._launcher)  # fmt: skip
        return self._requested

    def __enter__(self) -> StopOnSignal:
        self._requested, self.signal_name, self.signal_number = False, "", 0
        if self.enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self._requested:
            if now - self._first_at < REPEAT_WINDOW_SECONDS:
                return  # the same request delivered twice (terminal and torchrun)
            raise KeyboardInterrupt
        self._requested, self._first_at = True, now
        self.signal_name = signal.Signals(signum).name
        self.signal_number = signum
        log.warning("%s: stopping after this step with a checkpoint (send it again to stop now, "
                    "losing what the last checkpoint does not hold)", self.signal_name)  # fmt: skip

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
