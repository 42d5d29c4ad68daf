"""One training process per run directory (``run.dir/.lock``), released however it ends."""

from __future__ import annotations

import os
import signal

import pytest

from pretrain.train.errors import TrainingError
from pretrain.train.run_lock import LOCK_FILE, lock_run_dir, unlock_run_dir
from tests.helpers import hold_run_dir_lock, lock_run_dir_elsewhere


def test_another_process_is_refused_naming_the_holder_until_it_dies(tmp_path):
    run = tmp_path / "run"
    holder = hold_run_dir_lock(run)
    try:
        with pytest.raises(TrainingError, match=rf"in use by another training process \(pid "
                           rf"{holder.pid} on .*since .*\); wait for it"):  # fmt: skip
            lock_run_dir(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    path = lock_run_dir(run)  # the kernel dropped the dead process's lock
    assert f"pid {os.getpid()} on " in (run / LOCK_FILE).read_text()
    unlock_run_dir(path)


def test_the_same_process_may_open_it_again_and_unlocks_after_the_last(tmp_path):
    run = tmp_path / "run"
    first = lock_run_dir(run)
    second = lock_run_dir(run)
    assert first == second
    unlock_run_dir(first)
    other = lock_run_dir_elsewhere(run)
    assert "in use by another training process" in other.stderr  # still held once
    unlock_run_dir(second)
    other = lock_run_dir_elsewhere(run)
    assert other.returncode == 0 and other.stdout == "held\n", other.stderr
