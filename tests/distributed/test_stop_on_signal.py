"""A signal under torchrun (Ctrl-C, or SIGTERM from a scheduler) stops every rank after the
same step (the one after the step the signal arrives in) with a checkpoint of it, also when
only one rank received it; ``--resume`` then finishes the run as if nothing had happened."""

from __future__ import annotations

import pytest

from pretrain.train.checkpoint import list_steps
from pretrain.train.metrics import read_metrics
from tests.distributed.test_data_parallel import (
    REPO,
    STEPS,
    _assert_same_run,
    _overrides,
    _torchrun,
)

pytestmark = pytest.mark.distributed

WORKER = str(REPO / "tests" / "distributed" / "signal_in_step.py")
SIGNAL_AT = 5  # the signal is sent as step 6 begins, after step 5's checkpoint


@pytest.mark.parametrize(
    ("strategy", "sender", "signal_name", "to"),
    [
        ("fsdp", 1, "SIGTERM", "self"),  # rank 0 hears nothing: rank 1's vote must stop it
        ("ddp", 0, "SIGINT", "torchrun"),  # torchrun forwards it to both workers
    ],
)
def test_every_rank_stops_after_one_step_saves_it_and_resume_is_exact(
    strategy,
    sender,
    signal_name,
    to,
    single_run,
    shards_dir,
    tokenizer_dir,
    tmp_path,
):
    run = tmp_path / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, distributed__strategy=strategy)
    worker = [WORKER, str(sender), str(SIGNAL_AT), signal_name, to]
    proc = _torchrun(worker, args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    # Where torchrun forwards the signal, it may reach a rank in step 6 or just after it.
    stopped = max(r["step"] for r in read_metrics(run) if r["split"] == "train")
    assert SIGNAL_AT < stopped < STEPS, out[-3000:]
    if to == "self":  # rank 0 stopped on rank 1's vote, read once step 7 was queued
        assert stopped == SIGNAL_AT + 2
        assert f"step {stopped} on a signal to another rank" in out, out[-3000:]
    assert f"step {stopped} on {signal_name}" in out, out[-3000:]
    assert out.count(f"interrupted; stopped after step {stopped}") == 2, out[-3000:]  # each rank
    assert list_steps(run / "checkpoints") == [SIGNAL_AT, stopped]

    _torchrun(["-m", "pretrain", "train"], [*args, "--resume"])
    _assert_same_run(run, single_run)  # the same losses, gradient norms and weights


def test_workers_of_a_killed_torchrun_save_and_exit(shards_dir, tokenizer_dir, tmp_path):
    """``kill -9`` of torchrun alone: its workers (in a session of their own) would train on
    to the end, unseen, beside any run resumed into the same directory."""
    import signal
    import subprocess
    import sys
    import time

    from pretrain.distributed.env import free_port
    from tests.distributed.test_data_parallel import _env

    run = tmp_path / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=10_000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "pretrain", "train", *args]  # fmt: skip
    launcher = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or not read_metrics(run):
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    launcher.send_signal(signal.SIGKILL)
    out, _ = launcher.communicate(timeout=120)  # the pipe closes once the worker exits too
    stopped = max(r["step"] for r in read_metrics(run) if r["split"] == "train")
    assert stopped < 10_000
    assert "the torchrun launcher (pid" in out, out[-3000:]
    assert f"stopped after step {stopped} on the exit of its torchrun launcher" in out
    assert list_steps(run / "checkpoints")[-1] == stopped
