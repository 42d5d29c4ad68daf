"""Record a few training steps with ``torch.profiler`` (``--log.profile_steps=[FIRST,LAST]``).

What torchtitan's ``--profiling.enable_profiling`` and OLMo-core's ``ProfilerCallback`` give:
each rank writes ``profile/rank{R}_steps_{FIRST}-{LAST}.json``, a Chrome trace (open it in
Perfetto or ``chrome://tracing``), and ``.txt``, the ops that took longest. Every step of
the range is labelled ``step N`` in the trace. The profiler starts before the first step is
queued and stops once the device has finished the last, which is the one wait it adds to the
loop.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

log = logging.getLogger(__name__)


class StepProfiler:
    """Profiles the optimizer steps ``first..last`` (inclusive, counted from 1) of a run.

    Args:
        steps: ``(first, last)``, or None to profile nothing.
        out_dir: where the files go (created when the first step starts).
        rank: this process's rank, in the file names.
        device: the training device; CUDA kernels are recorded on a GPU.
    """

    def __init__(
        self, steps: tuple[int, int] | None, out_dir: Path, rank: int, device: torch.device
    ) -> None:
        self.steps = steps
        self.out_dir = out_dir
        self.rank = rank
        self.device = device
        self._profile: profile | None = None

    def step(self, number: int) -> contextlib.AbstractContextManager:
        """Around queuing step ``number``: starts recording at the first step of the range,
        labels the step, and stops and writes the files after the last."""
        if self.steps is None or not self.steps[0] <= number <= self.steps[1]:
            return contextlib.nullcontext()
        return self._recorded(number)

    @contextlib.contextmanager
    def _recorded(self, number: int):
        if self._profile is None:
            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._profile = profile(activities=activities)
            self._profile.start()
        with record_function(f"step {number}"):
            yield
        if number == self.steps[1]:
            self.finish()

    def finish(self) -> None:
        """Stop recording (waiting for the device) and write the files; a no-op when not
        recording. Called after the last step of the range, or when the run ends first."""
        if self._profile is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        prof, self._profile = self._profile, None
        prof.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        first, last = self.steps
        stem = self.out_dir / f"rank{self.rank}_steps_{first}-{last}"
        prof.export_chrome_trace(f"{stem}.json")
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        Path(f"{stem}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
        log.info("profiled steps %d-%d: %s.json (Chrome trace), %s.txt", first, last, stem, stem)
