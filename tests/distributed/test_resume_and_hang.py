"""Resharding and hangs, on CPU with gloo: a DDP run saved on 2 ranks resumes on 4 at exactly
the next sample and finishes like one process (also under hybrid-sharded FSDP, two shard
groups of two ranks; an FSDP checkpoint's resharding onto 4 ranks is tested by
test_tensor_parallel.py); a rank
that stops responding (SIGSTOP, not death) makes the other exit with the clear error within
``distributed.timeout_seconds``, leaving no checkpoint that looks complete but is not."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest

from pretrain.train.checkpoint import (
    SHARDED_DIR,
    STATE_FILE,
    list_steps,
    load_checkpoint,
    step_dir_name,
    verify_checkpoint,
)
from pretrain.train.metrics import read_metrics
from tests.distributed.test_data_parallel import (
    LOSS_RTOL,
    PARAM_ATOL,
    REPO,
    STEPS,
    _launch_two_ranks,
    _losses,
    _overrides,
    _torchrun,
    _weights,
)

pytestmark = pytest.mark.distributed

RECORD = str(REPO / "tests" / "distributed" / "record_samples.py")
RECORD_HASHES = str(REPO / "tests" / "distributed" / "record_hashes.py")
SAVED_AT = 5  # checkpoint.every_steps of _overrides: the resume point
GLOBAL_BATCH = 8  # windows a step (train.tokens_per_batch / train.seq_len)


@pytest.fixture(scope="module")
def saved_by_two_ddp_ranks(tmp_path_factory, shards_dir, tokenizer_dir):
    """A run of 2 DDP ranks without its step-10 checkpoint: it resumes at step 5."""
    run = tmp_path_factory.mktemp("saved") / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, distributed__strategy="ddp")
    _torchrun(["-m", "pretrain", "train"], args)
    shutil.rmtree(run / "checkpoints" / step_dir_name(STEPS))
    return run


# A sharded (FSDP) checkpoint saved on 2 ranks and resumed on 4: test_tensor_parallel.py,
# whose tensor-parallel pair resumes as 2 x 2 (DCP reshards over both mesh dimensions).
@pytest.mark.parametrize("strategy", ["ddp", "hsdp"])
def test_saved_on_two_ranks_resumes_on_four(
    strategy,
    saved_by_two_ddp_ranks,
    single_run,
    shards_dir,
    tokenizer_dir,
    tmp_path,
):
    # Saved on 2 ranks at step 5 (a copy each: the run restarts there); ddp -> hsdp: whole
    # weights and optimizer state are sharded on resume, over each of two shard groups of two
    # ranks.
    run = tmp_path / "run"
    shutil.copytree(saved_by_two_ddp_ranks, run)
    # hsdp: two shard groups of two ranks, {0, 1} and {2, 3}, each a whole copy
    hybrid = {"distributed__strategy": "fsdp", "distributed__replicate_degree": 2}
    resume = hybrid if strategy == "hsdp" else {"distributed__strategy": strategy}
    args = _overrides(shards_dir, tokenizer_dir, run, **resume)
    saved = json.loads((run / "checkpoints" / step_dir_name(SAVED_AT) / STATE_FILE).read_text())
    assert saved["world_size"] == 2
    assert saved["loader"]["num_samples_consumed"] == SAVED_AT * GLOBAL_BATCH
    assert not (run / "checkpoints" / step_dir_name(SAVED_AT) / SHARDED_DIR).exists()

    # Resumed on 4 ranks (one micro-batch each a step instead of two).
    out = tmp_path / "samples"
    out.mkdir()
    _torchrun([RECORD, str(out)], [*args, "--resume"], nproc=4)

    # Every sample after the checkpoint exactly once: none repeated, none skipped, each rank
    # its own stride of the global position.
    seen = [json.loads((out / f"samples_rank{r}.json").read_text()) for r in range(4)]
    first = SAVED_AT * GLOBAL_BATCH
    assert sorted(s for rank in seen for s in rank) == list(range(first, STEPS * GLOBAL_BATCH))
    for r, samples in enumerate(seen):
        assert samples and all((s - first) % 4 == r for s in samples), (r, samples)

    # The rest of the run is the single-process one, up to summation order.
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["tokens"] == STEPS * GLOBAL_BATCH * 32
    got = [r["loss"] for r in records[SAVED_AT:]]
    assert got == pytest.approx(_losses(single_run)[SAVED_AT:], rel=LOSS_RTOL)
    a, b = _weights(run), _weights(single_run)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= PARAM_ATOL
    state = json.loads((run / "checkpoints" / step_dir_name(STEPS) / STATE_FILE).read_text())
    assert state["world_size"] == 4
    assert state["loader"]["num_samples_consumed"] == STEPS * GLOBAL_BATCH
    if strategy == "hsdp":
        # a shard group's ranks hold different halves; the two groups, the same ones
        layout = [json.loads((out / f"layout_rank{r}.json").read_text()) for r in range(4)]
        assert all(lay["mesh_shape"] == [2, 2] for lay in layout)
        assert layout[0]["placements"] == ["Replicate", "Shard"]
        assert all(2 * lay["local_rows"] == lay["rows"] for lay in layout)
        sums = [lay["local_sum"] for lay in layout]
        assert sums[0] == sums[2] != sums[1] == sums[3]
    if strategy in ("fsdp", "hsdp"):
        shards = {
            p.name for p in (run / "checkpoints" / step_dir_name(STEPS) / SHARDED_DIR).iterdir()
        }
        assert {f"__{r}_0.distcp" for r in range(4)} <= shards


def test_rank_0_alone_verifies_and_every_rank_falls_back_to_the_same_checkpoint(
    single_run,
    shards_dir,
    tokenizer_dir,
    tmp_path,
):
    """The latest checkpoint is corrupted without changing its size: rank 0 reads it through
    sha256 and refuses it, and rank 1, which checks sizes only, resumes from the step rank 0
    chose, so the run finishes like the uninterrupted one."""
    run = tmp_path / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, distributed__strategy="ddp")
    _torchrun(["-m", "pretrain", "train"], args)
    bad = run / "checkpoints" / step_dir_name(STEPS) / "optim.pt"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "hashed"
    out.mkdir()
    _torchrun([RECORD_HASHES, str(out)], [*args, "--resume"])
    hashed = [json.loads((out / f"hashed_rank{r}.json").read_text()) for r in (0, 1)]
    assert str(bad) in hashed[0]
    assert hashed[1] == []
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # 6..10 again, once
    assert [r["loss"] for r in records] == pytest.approx(_losses(single_run), rel=LOSS_RTOL)
    a, b = _weights(run), _weights(single_run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= PARAM_ATOL


def test_a_hung_rank_stops_the_other_within_the_timeout(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    timeout_s = 8  # slack for a loaded CI machine; the bound below is timeout + 10 s
    args = _overrides(
        shards_dir,
        tokenizer_dir,
        run,
        distributed__strategy="fsdp",
        distributed__timeout_seconds=timeout_s,
        train__max_steps=100_000,
        eval__every_steps=0,
        checkpoint__every_steps=2,
        checkpoint__keep_last=2,
    )
    procs = _launch_two_ranks(args)
    stopped_in_save = False
    try:
        # Wait for a checkpoint to exist, then stop rank 1 as soon as rank 0 starts the next
        # one (its step_N.tmp appears), so rank 0 is left waiting inside a checkpoint.
        deadline = time.monotonic() + 90
        while not list_steps(ckpts):
            assert time.monotonic() < deadline, "no checkpoint written"
            assert all(p.poll() is None for p in procs), procs[0].communicate()
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not stopped_in_save:
            stopped_in_save = any(p.suffix == ".tmp" for p in ckpts.iterdir())
            if not stopped_in_save:
                time.sleep(0.002)
        procs[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert procs[0].poll() is None, procs[0].communicate()
        _, stderr = procs[0].communicate(timeout=timeout_s + 60)
        waited = time.monotonic() - stopped_at
    finally:
        if procs[1].poll() is None:
            procs[1].send_signal(signal.SIGCONT)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()  # reap it and close its pipes
    left = sorted(p.name for p in ckpts.glob("*.tmp"))
    print(f"rank 0 exited {waited:.1f} s after rank 1 stopped (left behind: {left})")
    assert procs[0].returncode not in (0, None)
    assert "another rank died or stopped responding" in stderr, stderr[-3000:]
    assert f"timeout_seconds={timeout_s}" in stderr
    assert waited < timeout_s + 10, waited

    # No half-written checkpoint looks complete: an unfinished step_N.tmp has no state.json
    # and is not listed; every listed checkpoint verifies, and resuming would use the newest.
    for tmp in ckpts.glob("*.tmp"):
        assert not (tmp / STATE_FILE).exists(), sorted(tmp.rglob("*"))
    steps = list_steps(ckpts)
    assert steps
    for step in steps:
        verify_checkpoint(ckpts / step_dir_name(step))
    assert load_checkpoint(ckpts).step == steps[-1]
