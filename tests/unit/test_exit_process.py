"""``exit_process``: a torchrun worker leaves with its code and its output flushed, skipping
interpreter finalization (where PyTorch can abort); a single process exits normally."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = (
    "import atexit, logging, sys\n"
    "from pretrain.distributed.launch import exit_process\n"
    "atexit.register(lambda: print('finalized'))\n"
    "print('stdout line', end='')\n"
    "print('stderr line', end='', file=sys.stderr)\n"
    "exit_process(3)\n"
)


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_exit_code_and_flushed_output(world_size):
    env = dict(os.environ, WORLD_SIZE=world_size, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("stderr line")
    if world_size == "1":  # a plain process runs its exit handlers
        assert proc.stdout == "stdout line" + "finalized\n"
    else:  # a worker skips finalization, yet nothing it printed is lost
        assert proc.stdout == "stdout line"
