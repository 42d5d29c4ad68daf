"""Batches drawn in a worker process (``data.batch_worker=process``): the same batches as the
training process draws, the same losses and exact resume; the worker's error raised in the
trainer; a terminal's Ctrl-C ignored by the worker; a killed worker's place taken by the
trainer's own process, with the same batches."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pretrain.config import ExperimentConfig, ObjectiveConfig, load_config
from pretrain.tokenizer import Tokenizer
from pretrain.train.batch_worker import BatchSource, BatchWorkerError, WorkerStepBatches
from pretrain.train.step_batches import StepBatches
from pretrain.train.trainer import Trainer
from tests.helpers import crash_then_resume
from tests.helpers import losses as _losses
from tests.integration.test_train import _overrides


def _config(shards_dir, tokenizer_dir, run_dir, worker: str, **extra) -> ExperimentConfig:
    args = _overrides(shards_dir, tokenizer_dir, run_dir, data__batch_worker=worker, **extra)
    return load_config(ExperimentConfig, None, args)


def _same(a, b) -> bool:
    """Equal ModelBatches (tensors element by element, nested dataclasses field by field)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    return a == b


def _same_state(a, b) -> bool:
    return a[0] == b[0] and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "extra",
    [
        {},  # causal LM on the decoder
        {"model__family": "encoder", "objective__name": "mlm"},  # random masks
    ],
)
def test_the_worker_draws_the_batches_of_the_training_process(
    extra, shards_dir, tokenizer_dir, tmp_path
):
    inline = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "a", "none", **extra))
    worker = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "b", "process", **extra))
    assert isinstance(inline.batches, StepBatches)
    assert isinstance(worker.batches, WorkerStepBatches)
    assert inline.grad_accum == worker.grad_accum == 2
    try:
        assert _same_state(inline.batches.data_state(), worker.batches.data_state())
        for _ in range(4):
            inline.batches.draw_ahead()  # as the trainer does; the worker draws on its own
            expected, got = inline.batches.take(), worker.batches.take()
            assert len(expected) == len(got) == 2
            assert all(_same(x, y) for x, y in zip(expected, got, strict=True))
            assert _same_state(inline.batches.data_state(), worker.batches.data_state())
    finally:
        worker.close()


def test_training_with_the_worker_matches_and_resumes_exactly(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    straight = tmp_path / "straight"
    Trainer(_config(shards_dir, tokenizer_dir, straight, "none")).fit()
    crashed = tmp_path / "crashed"
    # Crashes before step 6, after step 4's checkpoint; resumes with a new worker from there.
    crash_then_resume(
        lambda: _config(shards_dir, tokenizer_dir, crashed, "process"), 6, monkeypatch
    )
    assert _losses(crashed) == _losses(straight)  # bit for bit, every step
    assert len(_losses(straight)) == 12


def _source(tokenizer_dir, shards_dir) -> BatchSource:
    return BatchSource(
        train=(str(shards_dir),),
        micro_batch_size=2,
        seq_len=32,
        tokenizer_dir=str(tokenizer_dir),
        objective=ObjectiveConfig(name="mlm"),  # random masks: the generator matters
        family="encoder",
    )


def _inline(source: BatchSource, tokenizer_dir) -> StepBatches:
    """Drawing in this process, from the first sample and a fixed generator."""
    objective, loader = source.build(Tokenizer.load(tokenizer_dir), checksum=False)
    return StepBatches(loader, objective, torch.Generator().manual_seed(7), per_step=1)


def test_a_failing_worker_raises_its_error_in_the_trainer(shards_dir, tokenizer_dir, tmp_path):
    source = _source(tokenizer_dir, shards_dir)
    inline = _inline(source, tokenizer_dir)
    broken = dataclasses.replace(source, tokenizer_dir=str(tmp_path / "no_tokenizer"))
    batches = WorkerStepBatches(broken, inline)
    with pytest.raises(BatchWorkerError, match="no_tokenizer"):
        batches.take()
    batches.close()


def test_a_killed_worker_hands_over_to_this_process_with_the_same_batches(
    shards_dir, tokenizer_dir, caplog
):
    source = _source(tokenizer_dir, shards_dir)
    reference = _inline(source, tokenizer_dir)
    batches = WorkerStepBatches(source, _inline(source, tokenizer_dir), ahead=1)
    try:
        assert all(_same(x, y) for x, y in zip(batches.take(), reference.take(), strict=True))
        os.kill(batches._process.pid, signal.SIGINT)  # a terminal's Ctrl-C: ignored
        time.sleep(0.5)
        for _ in range(3):  # still drawn by the worker
            got, expected = batches.take(), reference.take()
            assert all(_same(x, y) for x, y in zip(got, expected, strict=True))
        assert batches._process.is_alive() and not batches._worker_died
        os.kill(batches._process.pid, signal.SIGKILL)
        batches._wait_for_exit(10)
        with caplog.at_level(logging.WARNING):
            for _ in range(4):  # what it queued before dying, then this process's draws
                got, expected = batches.take(), reference.take()
                assert all(_same(x, y) for x, y in zip(got, expected, strict=True))
                assert _same_state(batches.data_state(), reference.data_state())
        assert "exited (code -9)" in caplog.text and batches._worker_died
    finally:
        batches.close()


def test_a_worker_stopped_and_started_again_goes_on_where_the_taken_batches_ended(
    shards_dir, tokenizer_dir
):
    """close() drops what the worker drew ahead; the next take() starts a new worker from the
    data state after the batches taken, so nothing is skipped or repeated."""
    source = _source(tokenizer_dir, shards_dir)
    reference = _inline(source, tokenizer_dir)
    batches = WorkerStepBatches(source, _inline(source, tokenizer_dir), ahead=2)
    try:
        for restart in (False, True, False, True):
            if restart:
                batches.close()
            got, expected = batches.take(), reference.take()
            assert all(_same(x, y) for x, y in zip(got, expected, strict=True))
            assert _same_state(batches.data_state(), reference.data_state())
    finally:
        batches.close()


ORPHAN = """
import os, signal, sys, torch
from pretrain.config import ObjectiveConfig
from pretrain.tokenizer import Tokenizer
from pretrain.train.batch_worker import BatchSource, WorkerStepBatches
from pretrain.train.step_batches import StepBatches

if __name__ == "__main__":
    shards, tokenizer = sys.argv[1], sys.argv[2]
    source = BatchSource(train=(shards,), micro_batch_size=2, seq_len=32, tokenizer_dir=tokenizer,
                         objective=ObjectiveConfig(name="clm"), family="decoder")
    objective, loader = source.build(Tokenizer.load(tokenizer), checksum=False)
    batches = WorkerStepBatches(source, StepBatches(loader, objective, torch.Generator(), 1))
    batches.take()
    print(batches._process.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all, as the OOM killer does
"""


def test_a_worker_whose_trainer_was_killed_exits(shards_dir, tokenizer_dir, tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(shards_dir), str(tokenizer_dir)],
        stdout=subprocess.PIPE,  # the worker inherits it: read a line, not to the end
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    with proc.stdout:
        pid = int(proc.stdout.readline().split()[0])
    assert proc.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), f"worker {pid} outlived its trainer"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
