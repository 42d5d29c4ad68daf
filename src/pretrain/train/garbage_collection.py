"""Python's garbage collector on the training loop's schedule instead of its own.

CPython's default thresholds (``gc.get_threshold()`` is (700, 10, 10) on the Python 3.11 this
was measured with) collect generation 0 after every 700 net allocations of container objects,
generation 1 after every 10 of those, and generation 2 (every object the process holds:
modules, compiled graphs, the tokenizer, ...) after every 10 of generation 1 once enough
objects have piled up.
A full collection stalls the host for as long as it takes to walk the heap: 160-220 ms in the
trainer on the CPU VM (``docs/benchmarks.md``, "Garbage collection in the loop"), longer than
a whole XLNet-base step on an H100. Under data parallelism a pause on one rank holds every
other rank at the next collective, and ranks pause at different times.

So, as torchtitan (``gc_freq``), OLMo-core (``GarbageCollectorCallback``) and Megatron-LM
(``--manual-gc``) do, the loop turns the automatic collector off and collects generations 0
and 1 every ``train.gc_every_steps`` steps, right after a step is queued: the device has work
while the host collects, and every rank collects at the same step. Objects that survive into
generation 2 are still freed by reference counting; only reference cycles among them wait
until the automatic collector is back on after the loop. No full collection is forced at
either end: one took 0.12 s in a fresh process holding torch and transformers and more in a
long one, which a test suite running many short trainings in one process would pay each time
(``tests/integration/test_train.py``: 78 s with them, 62 s without). ``gc_every_steps=0``
leaves the collector alone.

Measured, not assumed: in steady state the loop allocates few long-lived containers, so the
automatic collector ran twice in 50 steps there (0.004 ms a step, XLNet debug on the CPU
VM); the full collections happened while the run was set up. What this schedule changes is
where pauses fall, not how much they cost.
"""

from __future__ import annotations

import gc


class ScheduledGarbageCollection:
    """A context manager for the training loop; call :meth:`after_step` after each step.

    Args:
        every_steps: collect generations 0 and 1 after every this many steps; 0 keeps the
            automatic collector.
    """

    def __init__(self, every_steps: int) -> None:
        self.every_steps = every_steps
        self._was_enabled = True  # read in __enter__

    def __enter__(self) -> ScheduledGarbageCollection:
        if self.every_steps:
            self._was_enabled = gc.isenabled()
            gc.disable()
        return self

    def after_step(self, step: int) -> None:
        if self.every_steps and step % self.every_steps == 0:
            gc.collect(1)

    def __exit__(self, *exc) -> None:
        if self.every_steps and self._was_enabled:
            gc.enable()
