"""Worker for tests: ``pretrain train``, where one rank sends a signal as a step begins.

Usage: ``torchrun ... tests/distributed/signal_in_step.py RANK STEP SIGNAL TO --key=value ...``:
rank ``RANK``, as step ``STEP + 1`` begins, sends ``SIGNAL`` (``SIGINT`` or ``SIGTERM``) to
itself (``TO=self``: no other rank hears of it) or to its parent (``TO=torchrun``: torchrun
forwards it to every worker, as when a scheduler stops the job).
"""

from __future__ import annotations

import os
import signal
import sys
from unittest import mock

from pretrain.cli import main
from pretrain.distributed.launch import exit_process
from pretrain.train.trainer import Trainer


def run() -> int:
    rank, step, name, to = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sig = getattr(signal, name)
    queue_step = Trainer.queue_step

    def signalling(self):
        if self.dist.rank == rank and self.state.step == step:
            os.kill(os.getpid() if to == "self" else os.getppid(), sig)
        return queue_step(self)

    with mock.patch.object(Trainer, "queue_step", signalling):
        return main(["train", *sys.argv[5:]])


if __name__ == "__main__":
    exit_process(run())
