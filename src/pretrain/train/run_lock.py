"""One training process per run directory: an advisory lock on ``run.dir/.lock``.

Two trainers writing the same run directory (a ``--resume`` started while the first run still
trains, or workers a killed launcher left behind) interleave checkpoints and overwrite each
other's ``metrics.jsonl``. Rank 0 takes an exclusive ``flock`` on ``.lock`` for the run's
life; a second process is refused, naming the holder the file records. The kernel drops the
lock when its process ends in any way (SIGKILL included), so a crashed run never leaves a
stale lock behind. Within one process a run directory may be opened again (a notebook that
builds a new trainer after an error while the old object still lives).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from pretrain.train.errors import TrainingError

LOCK_FILE = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # this process's locks: path -> (fd, holders)


def lock_run_dir(run_dir: Path) -> Path:
    """Take the run directory's lock (creating the directory); returns the lock's path.

    Raises:
        TrainingError: another process holds it; the message names the pid and host.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = (run_dir / LOCK_FILE).resolve()
    if path in _held:
        fd, holders = _held[path]
        _held[path] = (fd, holders + 1)
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise TrainingError(
            f"{run_dir} is in use by another training process ({holder}); wait for it to "
            "end or stop it, or choose another --run.dir"
        ) from None
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
    _held[path] = (fd, 1)
    return path


def unlock_run_dir(path: Path) -> None:
    """Give back a lock :func:`lock_run_dir` took (the file stays; only the lock goes)."""
    if path not in _held:
        return
    fd, holders = _held[path]
    if holders > 1:
        _held[path] = (fd, holders - 1)
        return
    del _held[path]
    os.close(fd)  # closing the descriptor releases the flock
