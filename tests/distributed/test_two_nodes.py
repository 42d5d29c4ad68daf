"""Multi-node launch: two torchrun "nodes" of one process each, joined by the c10d rendezvous
over loopback (the command of docs/scaling-out.md), train like one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretrain.distributed.env import free_port
from pretrain.train.checkpoint import STATE_FILE, step_dir_name
from tests.distributed.test_data_parallel import (
    REPO,
    STEPS,
    _assert_same_run,
    _env,
    _overrides,
)

pytestmark = pytest.mark.distributed


def test_two_nodes_over_c10d_rendezvous_train_like_one_process(
    single_run,
    shards_dir,
    tokenizer_dir,
    tmp_path,
):
    run = tmp_path / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, distributed__strategy="fsdp")
    endpoint = f"127.0.0.1:{free_port()}"
    node = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=loopback-test",
        "-m", "pretrain", "train", *args,
    ]  # fmt: skip
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [subprocess.Popen(node, cwd=REPO, env=_env(), **pipes) for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    _assert_same_run(run, single_run)
    state = json.loads((run / "checkpoints" / step_dir_name(STEPS) / STATE_FILE).read_text())
    assert state["world_size"] == 2
