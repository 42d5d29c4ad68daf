"""What a process learns from its launcher, and how a worker leaves, without importing torch.

torchrun (and ``python -m torch.distributed.run``) exports ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` to every worker. The ``pretrain`` entry point reads them to decide how to exit,
and the data commands (tokenize, filter, dedup, ...) never need torch: keeping this module free
of it spares each of them torch's import, about 3.5 s on a laptop CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import typing


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` without)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise ValueError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers: {e}") from None
    return rank, local_rank, world_size


def exit_process(code: int) -> typing.NoReturn:
    """End the process with ``code``; a worker of a multi-process launch skips interpreter
    finalization.

    PyTorch can abort a process (SIGABRT, "terminate called without an active exception")
    while the interpreter is being torn down, when a gloo or autograd worker thread still holds
    tensors owned by Python (pytorch/pytorch#190489; the atexit fix of #179291 was abandoned).
    torchrun then reports a finished run as failed. By the time this is called the run's files
    are written and closed, so a worker flushes its logs and streams and leaves with
    ``os._exit``; a single process exits normally.
    """
    if env_world()[2] > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
