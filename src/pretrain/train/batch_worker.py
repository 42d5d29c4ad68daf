"""The training batches drawn in a worker process, ahead of the steps that take them.

Turning token windows into ModelBatches (masks, spans, permutations) costs the host 8.6-21 ms
for a 32 x 512 batch on one core for span corruption, UL2, XLNet and BART
(``docs/benchmarks.md``, "Batches from a worker process"), much of it in Python, which holds
the interpreter lock. On a GPU the host also launches every kernel of a step; where that
launching is the bottleneck, each millisecond of drawing is a millisecond the step takes
longer, and a thread would not help (it shares the lock). So :class:`WorkerStepBatches`
draws in a separate process, as PyTorch's ``DataLoader`` does with ``num_workers``: one
process, started with ``spawn``, which opens the same shards and builds the same objective
(:class:`BatchSource`) from the trainer's loader position and generator state, and sends each
step's batches through shared memory, a few steps ahead, as one buffer
(:mod:`pretrain.train.packed_tensors`).

Taking a micro-batch from the worker still costs the trainer 1.4-2.2 ms (same page), against
0.5 (CLM) and 2.0 ms (MLM) to draw it in place. So the worker is off unless
``data.batch_worker=process`` asks for it: it pays where the objective is costly and the host,
not the device, limits the step.

The worker is started with ``spawn`` (a forked copy of a process that holds a CUDA context
is not safe), so, as with ``DataLoader`` workers, a script that trains through the Python
API must start training under ``if __name__ == "__main__":``; ``pretrain train`` does.

One process and one generator, in order: the batches are exactly those drawn in the trainer's
own process (:class:`~pretrain.train.step_batches.StepBatches`), and a checkpoint stores the
data state after the batches taken, not after those drawn ahead, so exact resume holds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import time
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp

from pretrain.config import ExperimentConfig, ObjectiveConfig
from pretrain.data.loader import TokenLoader
from pretrain.objectives import build_objective, loader_seq_len
from pretrain.objectives.base import ModelBatch
from pretrain.tokenizer import Tokenizer
from pretrain.train.errors import BatchWorkerError
from pretrain.train.packed_tensors import pack, unpack
from pretrain.train.step_batches import StepBatches

log = logging.getLogger(__name__)

DataState = tuple[dict[str, Any], torch.Tensor]
"""(loader state, objective generator state): where the next batch starts."""

POLL_SECONDS = 1.0
"""How often :meth:`WorkerStepBatches.take` checks that the worker is alive while it waits."""

STOP_SECONDS = 10.0
"""How long :meth:`WorkerStepBatches.close` waits for the worker to exit after SIGKILL."""


@dataclasses.dataclass(frozen=True)
class BatchSource:
    """Everything that decides the training batches, small enough to send to a process.

    :meth:`build` is how the trainer makes its objective and loader too, so the worker's are
    the same by construction.
    """

    train: tuple[str, ...]
    micro_batch_size: int
    seq_len: int
    tokenizer_dir: str
    objective: ObjectiveConfig
    family: str
    weights: tuple[float, ...] | None = None
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, rank: int, world_size: int) -> BatchSource:
        """The source of a run's training batches on ``rank`` of ``world_size``."""
        return cls(
            train=tuple(cfg.data.train),
            weights=None if cfg.data.weights is None else tuple(cfg.data.weights),
            micro_batch_size=cfg.train.micro_batch_size,
            seq_len=cfg.train.seq_len,
            seed=cfg.train.seed,
            rank=rank,
            world_size=world_size,
            tokenizer_dir=str(cfg.data.tokenizer),
            objective=cfg.objective,
            family=cfg.model.family,
        )

    def build(self, tokenizer: Tokenizer, checksum: bool) -> tuple[Any, TokenLoader]:
        """(objective, training loader at its first sample)."""
        objective = build_objective(self.objective, tokenizer, self.seq_len, family=self.family)
        loader = TokenLoader(
            list(self.train),
            loader_seq_len(objective, self.seq_len),
            self.micro_batch_size,
            weights=None if self.weights is None else list(self.weights),
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            checksum=checksum,
            tokenizer_hash=tokenizer.hash,
        )
        return objective, loader


def _draw_forever(
    source: BatchSource, start: DataState, per_step: int, out: mp.Queue
) -> None:  # pragma: no cover - runs in the worker process (its effects are tested)
    """The worker: put ``("batches", *pack(([ModelBatch] * per_step, DataState after them)))``
    for each step, in order, until the process is stopped; ``("error", message)`` on a
    failure."""
    try:
        # Ctrl-C in a terminal reaches every process of the group; the trainer decides how to
        # stop (it finishes its steps, saves, then stops this process).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(1)
        # Shared memory by name: the default hands over a file descriptor through this
        # process's resource-sharer thread, which waits for the lock this loop holds (several
        # times slower a take in an exploration run, not logged: docs/benchmarks.md).
        mp.set_sharing_strategy("file_system")
        # The trainer's process verified the shards' checksums when it opened them.
        objective, loader = source.build(Tokenizer.load(source.tokenizer_dir), checksum=False)
        loader.load_state_dict(start[0])
        generator = torch.Generator()
        generator.set_state(start[1])
        parent = os.getppid()
        while True:
            batches = [objective(next(loader), generator) for _ in range(per_step)]
            state = (loader.state_dict(), generator.get_state())
            item = ("batches", *pack((batches, state)))  # one shared buffer, not one a tensor
            while True:  # a full queue: the trainer is busy, or gone (killed with SIGKILL)
                try:
                    out.put(item, timeout=POLL_SECONDS)
                    break
                except queue.Full:
                    if os.getppid() != parent:  # orphaned: nobody will read this
                        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - reported to the trainer, which raises it
        out.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class WorkerStepBatches:
    """:class:`~pretrain.train.step_batches.StepBatches` whose drawing runs in a worker process.

    If the worker dies (killed: out of memory, or a SIGTERM sent to every process of the job),
    the trainer's own process draws the rest, from where the batches taken so far ended, with
    a warning: the same batches, and the run goes on (or stops cleanly on that SIGTERM). An
    error the worker raised (bad data, say) is raised here instead.

    Args:
        source: what the batches are made from.
        inline: the trainer's own drawing (its loader, objective and generator, at the data
            state to start from); read when the first step is taken, so a checkpoint restored
            into them counts, and used if the worker dies.
        ahead: steps the worker may draw before they are taken.
    """

    def __init__(self, source: BatchSource, inline: StepBatches, ahead: int = 2) -> None:
        self.source = source
        self.inline = inline
        self.per_step = inline.per_step
        self.ahead = ahead
        self._process: mp.Process | None = None
        self._queue: mp.Queue | None = None
        self._state: DataState | None = None  # after the batches taken so far
        self._worker_died = False  # then `inline` draws

    def _launch(self) -> None:
        if self._state is None:
            self._state = self.inline.data_state()
        context = mp.get_context("spawn")  # a forked CUDA process is not usable
        self._queue = context.Queue(maxsize=self.ahead)
        self._process = context.Process(
            target=_draw_forever,
            args=(self.source, self._state, self.per_step, self._queue),
            name="pretrain-batches",
            daemon=True,  # never outlives the trainer
        )
        self._process.start()

    def draw_ahead(self) -> None:
        """Nothing to do while the worker draws ahead on its own."""
        if self._worker_died:
            self.inline.draw_ahead()

    def take(self) -> list[ModelBatch]:
        """The next step's batches, waiting for the worker if it has not drawn them yet.

        Raises:
            BatchWorkerError: the worker raised an error (its traceback in the message).
        """
        if self._worker_died:
            return self.inline.take()
        if self._process is None:
            self._launch()
        while True:
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                if not self._process.is_alive():
                    try:  # what it put just before it exited (an error, say)
                        item = self._queue.get(timeout=POLL_SECONDS)
                        break
                    except (queue.Empty, OSError, EOFError):
                        return self._draw_here_from_now_on()
            except (OSError, EOFError):  # a dead worker cannot hand over its batches
                self._wait_for_exit(POLL_SECONDS)
                return self._draw_here_from_now_on()
        if item[0] == "error":
            self.close()
            raise BatchWorkerError(f"the batch worker process failed: {item[1]}")
        batches, (loader_state, generator_state) = unpack(*item[1:])
        # its own copy: a view of the shared buffer would be saved with the whole buffer, and
        # Generator.set_state reads a state tensor from the start of its storage
        self._state = (loader_state, generator_state.clone())
        return batches

    def _draw_here_from_now_on(self) -> list[ModelBatch]:
        log.warning(
            "the batch worker process exited (code %s) without an error; this process draws "
            "the batches from here on (the same ones)",
            self._process.exitcode,
        )
        self.close()
        self.inline.loader.load_state_dict(self._state[0])
        self.inline.generator.set_state(self._state[1])
        self._worker_died = True
        return self.inline.take()

    def _wait_for_exit(self, seconds: float) -> None:
        """Until the worker has exited, at most ``seconds``. Not ``join()``: the shared-memory
        manager the worker started keeps a copy of the pipe ``join()`` waits on, so ``join()``
        would wait out its timeout."""
        deadline = time.monotonic() + seconds
        while self._process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def data_state(self) -> DataState:
        """(loader state, generator state) after the batches taken so far: what a checkpoint
        stores."""
        if self._worker_died or self._state is None:
            return self.inline.data_state()
        return self._state

    def close(self) -> None:
        """Stop the worker. The batches it drew ahead are dropped; a later :meth:`take`
        starts another worker where the taken ones ended."""
        if self._process is not None:
            self._process.kill()
            self._wait_for_exit(STOP_SECONDS)
            self._process = None
        if self._queue is not None:
            self._queue.close()
            self._queue.cancel_join_thread()
            self._queue = None
