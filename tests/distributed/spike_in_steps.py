"""Worker for tests: ``pretrain train`` whose loss is multiplied in given queued steps.

Usage: ``torchrun ... tests/distributed/spike_in_steps.py CALL:FACTOR,... --key=value ...``:
the training loss of every micro-batch of the CALL-th step queued by this process (counted
from 1, however the steps are numbered after a rollback) is multiplied by FACTOR.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from unittest import mock

from pretrain import losses as losses_mod
from pretrain.cli import main
from pretrain.distributed.launch import exit_process
from pretrain.train.trainer import Trainer


@contextlib.contextmanager
def spiking(factors: dict[int, float]) -> Iterator[None]:
    real_queue, real_ce = Trainer.queue_step, losses_mod.cross_entropy_sum
    calls = {"n": 0}

    def queue_step(self):
        calls["n"] += 1
        return real_queue(self)

    def cross_entropy_sum(hidden, *args, **kwargs):
        total, count, ce = real_ce(hidden, *args, **kwargs)
        factor = factors.get(calls["n"], 1.0) if hidden.requires_grad else 1.0
        return total * factor, count, ce * factor

    with (
        mock.patch.object(Trainer, "queue_step", queue_step),
        mock.patch.object(losses_mod, "cross_entropy_sum", cross_entropy_sum),
    ):
        yield


def parse(spec: str) -> dict[int, float]:
    return {int(c): float(f) for c, f in (item.split(":") for item in spec.split(","))}


if __name__ == "__main__":
    with spiking(parse(sys.argv[1])):
        exit_process(main(["train", *sys.argv[2:]]))
