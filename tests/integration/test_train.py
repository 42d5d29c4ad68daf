"""Training end to end on CPU: loss falls, exact resume (also after SIGKILL), checkpoint
fallback, non-finite steps, config errors."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch._functorch.config as functorch_config
from torch._dynamo.utils import counters

from pretrain import losses as losses_mod
from pretrain.cli import EXIT_BAD_INPUT, main
from pretrain.config import ExperimentConfig, load_config
from pretrain.generate import generate
from pretrain.train import compile as compile_mod
from pretrain.train import trainer as trainer_mod
from pretrain.train.checkpoint import LATEST, list_steps, load_checkpoint
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer, TrainingError
from tests.helpers import crash_then_resume, hold_run_dir_lock
from tests.helpers import losses as _losses

TINY_MODEL = ["--model.size=debug", "--model.d_model=64", "--model.n_layers=2", "--model.n_heads=4"]


def _overrides(shards_dir: Path, tokenizer_dir: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "data.train": f"[{shards_dir}]",
        "data.val": str(shards_dir),
        "data.tokenizer": str(tokenizer_dir),
        "train.seq_len": 32,
        "train.micro_batch_size": 4,
        "train.tokens_per_batch": 256,
        "train.max_steps": 12,
        "optim.lr": 3e-3,
        "optim.warmup_steps": 2,
        "eval.every_steps": 4,
        "eval.max_batches": 3,
        "checkpoint.every_steps": 4,
        "checkpoint.keep_last": 2,
        "log.every_steps": 1,
        "log.progress": False,
        "log.plots": False,  # matplotlib's import: 1.5 s a process
        "log.tensorboard": False,
        "run.dir": str(run_dir),
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return TINY_MODEL + [f"--{k}={v}" for k, v in base.items()]


def _config(*args, **extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, _overrides(*args, **extra))


def test_loss_falls_and_run_directory_is_complete(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    config = _config(shards_dir, tokenizer_dir, run, train__max_steps=40, log__plots=True)
    summary = Trainer(config).fit()
    losses = [loss for _, loss in _losses(run)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # about 6.9 -> 6.0 in 40 steps
    val = _losses(run, "val")
    assert [s for s, _ in val] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert val[-1][1] < val[0][1]
    records = read_metrics(run)
    assert all({"step", "split", "loss", "lr", "tokens"} <= r.keys() for r in records)
    assert all(r["bits_per_byte"] > 0 for r in records if r["split"] == "val")
    assert summary["step"] == 40 and summary["tokens"] == 40 * 256
    assert (run / "config.yaml").exists() and (run / "tokenizer" / "tokenizer.json").exists()
    assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "samples.txt").read_text().startswith("--- step 40 ---\n")
    # keeps the last 2 checkpoints plus the best one
    steps = list_steps(run / "checkpoints")
    assert steps[-2:] == [36, 40] and len(steps) <= 3
    best = (run / "checkpoints" / "best").read_text().strip()
    assert best == f"step_{min(range(len(val)), key=lambda i: val[i][1]) * 4 + 4:06d}"
    # the saved config reproduces the run's settings
    saved = load_config(ExperimentConfig, run / "config.yaml")
    assert saved.train.max_steps == 40 and saved.model.d_model == 64


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_a_crash_reproduces_the_losses_bit_for_bit(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch, optimizer
):
    straight = tmp_path / "straight"
    Trainer(_config(shards_dir, tokenizer_dir, straight, optim__name=optimizer)).fit()

    crashed = tmp_path / "crashed"

    def only_step_4_was_saved():
        assert list_steps(crashed / "checkpoints") == [4]

    crash_then_resume(
        lambda: _config(shards_dir, tokenizer_dir, crashed, optim__name=optimizer),
        7,
        monkeypatch,
        only_step_4_was_saved,
    )
    assert _losses(crashed) == _losses(straight)  # exact float equality, steps 1..12
    assert _losses(crashed, "val") == _losses(straight, "val")
    a = load_checkpoint(straight / "checkpoints").model_state
    b = load_checkpoint(crashed / "checkpoints").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_finishes_the_step_saves_it_and_resume_continues_exactly(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    """The first SIGINT stops training after the step following the one it arrives in (the
    trainer reads a step's votes once the next step is queued), with a checkpoint of that step
    (none was due) and its train record; ``--resume`` then gives the uninterrupted losses."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, straight)).fit()
    args = _overrides(shards_dir, tokenizer_dir, run, log__every_steps=4)
    queue_step = Trainer.queue_step

    def interrupted_in_step_6(self):
        if self.state.step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of step 6
        return queue_step(self)

    with mock.patch.object(Trainer, "queue_step", interrupted_in_step_6):
        assert main(["train", *args]) == 130
    err = capsys.readouterr().err
    assert "stopped after step 7 on SIGINT" in err and "rerun the same command with --resume" in err
    assert list_steps(run / "checkpoints") == [4, 7]
    assert [s for s, _ in _losses(run)] == [4, 7]  # the last step is logged too
    assert main(["train", *args, "--resume"]) == 0
    assert _losses(run)[-1] == _losses(straight)[-1]
    expected = dict(_losses(straight))
    assert all(loss == expected[s] for s, loss in _losses(run))


def test_sigterm_stops_with_the_shells_exit_code_for_it(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    """A scheduler's preemption (SIGTERM) exits with 143, Ctrl-C (SIGINT) with 130."""
    args = _overrides(shards_dir, tokenizer_dir, tmp_path / "run", eval__every_steps=0)
    queue_step = Trainer.queue_step

    def terminated_in_step_2(self):
        if self.state.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return queue_step(self)

    with mock.patch.object(Trainer, "queue_step", terminated_in_step_2):
        assert main(["train", *args]) == 143
    assert "stopped after step 3 on SIGTERM" in capsys.readouterr().err
    assert list_steps(tmp_path / "run" / "checkpoints") == [3]


@pytest.fixture
def ten_second_steps(monkeypatch) -> list[float]:
    """The trainer's clock, as a one-item list the test may set; each step takes 10 s of it."""
    clock = [0.0]
    monkeypatch.setattr(trainer_mod, "time", mock.Mock(perf_counter=lambda: clock[0]))
    queue_step = Trainer.queue_step

    def ten_seconds_a_step(self):
        clock[0] += 10.0
        return queue_step(self)

    monkeypatch.setattr(Trainer, "queue_step", ten_seconds_a_step)
    return clock


def test_max_minutes_stops_at_a_step_with_its_record_and_checkpoint(
    shards_dir, tokenizer_dir, tmp_path, ten_second_steps
):
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, train__max_minutes=0.5, log__every_steps=5)
    summary = Trainer(cfg).fit()
    # 30 s: the deadline passes with step 3, whose vote is read once step 4 is queued
    assert summary["step"] == 4
    assert [s for s, _ in _losses(run)] == [4]  # logged although 4 is not a multiple of 5
    assert list_steps(run / "checkpoints") == [4]


def test_max_minutes_counts_the_training_time_before_a_resume(
    shards_dir, tokenizer_dir, tmp_path, ten_second_steps
):
    run = tmp_path / "run"
    first = _config(shards_dir, tokenizer_dir, run, train__max_minutes=0.5, train__max_steps=2)
    assert Trainer(first).fit()["step"] == 2  # 20 s of the 30
    ten_second_steps[0] = 1000.0  # restarted later: the time between runs does not count
    again = _config(shards_dir, tokenizer_dir, run, train__max_minutes=0.5, train__max_steps=9)
    summary = Trainer(again, resume=True).fit()
    assert summary["step"] == 4  # 10 s more reach the 30 s at step 3, read after step 4
    assert summary["seconds"] == 40.0


def test_accumulated_gradient_is_that_of_the_summed_loss_over_all_label_tokens(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    # Prefix LM: each micro-batch has its own number of label tokens (the suffixes), so the
    # step's gradient must be d(sum of all cross-entropies / all label tokens), not the mean
    # of per-micro-batch means.
    import copy

    from pretrain.losses import cross_entropy_sum

    cfg = _config(
        shards_dir,
        tokenizer_dir,
        tmp_path / "run",
        objective__name="prefix_lm",
        train__micro_batch_size=2,
        train__tokens_per_batch=128,
        optim__grad_clip=0,  # no clipping: the optimizer sees the raw gradient
    )
    trainer = Trainer(cfg)
    assert trainer.grad_accum == 2
    reference = copy.deepcopy(trainer.model)
    taken, grads = [], {}
    take = trainer.batches.take
    monkeypatch.setattr(trainer.batches, "take", lambda: taken.extend(take()) or taken)
    monkeypatch.setattr(
        trainer.optimizer,
        "step",
        lambda: grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()}),
    )
    trainer.train_step()
    assert len(taken) == 2 and taken[0].num_label_tokens != taken[1].num_label_tokens
    total = sum(
        cross_entropy_sum(reference(b), b.labels, reference.output_weight)[0] for b in taken
    )
    (total / sum(b.num_label_tokens for b in taken)).backward()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_run_started_with_relative_paths_evaluates_from_anywhere(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(shards_dir.parent)
    relative = {"data__train": f"[{shards_dir.name}]", "data__val": shards_dir.name,
                "data__tokenizer": os.path.relpath(tokenizer_dir)}  # fmt: skip
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=2, **relative)).fit()
    saved = load_config(ExperimentConfig, run / "config.yaml")
    assert saved.data.val == str(shards_dir) and saved.data.train == [str(shards_dir)]
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--run", str(run), "--max-batches", "1", "--json"]) == 0
    with pytest.raises(SystemExit):  # argparse refuses it
        main(["eval", "--run", str(run), "--max-batches", "0"])
    assert main(["eval", "--run", str(run), "--checkpoint", "step_7"]) == EXIT_BAD_INPUT
    assert "no checkpoint of step 7 (there are: step_2)" in capsys.readouterr().err


def test_a_gpt2_run_shorter_than_the_sample_finishes_with_a_shorter_sample(
    shards_dir, tokenizer_dir, tmp_path
):
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, train__max_steps=2, model__style="gpt2",
                  model__max_seq_len=32, log__sample_tokens=100)  # fmt: skip
    with mock.patch("pretrain.generate.generate", wraps=generate) as sampler:
        assert Trainer(cfg).fit()["step"] == 2
    assert sampler.call_args.args[2] == 32  # as many new tokens as 32 positions allow
    assert (run / "samples.txt").read_text().startswith("--- step 2 ---")


def test_resume_auto_starts_a_new_run_then_continues_it(shards_dir, tokenizer_dir, tmp_path):
    """One command for the first launch and every restart (torchrun --max-restarts, Slurm)."""
    run = tmp_path / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=4)
    assert main(["train", *args, "--resume=auto"]) == 0  # nothing to resume: a new run
    assert list_steps(run / "checkpoints") == [4]
    longer = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=8)
    assert main(["train", *longer, "--resume=auto"]) == 0  # continues from step 4
    assert [s for s, _ in _losses(run)] == list(range(1, 9))
    assert main(["train", *longer]) == EXIT_BAD_INPUT  # without it, an existing run is refused


def _four_steps_then_resume_with(shards_dir, tokenizer_dir, run, capsys):
    """Train ``run`` 4 steps; returns ``resume(*overrides)``: a resume to step 8 that must be
    refused (exit status 2), giving what it printed on stderr."""
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=4)).fit()
    args = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=8)

    def resume(*overrides: str) -> str:
        assert main(["train", *args, *overrides, "--resume"]) == EXIT_BAD_INPUT
        return capsys.readouterr().err

    return resume


def test_resume_with_another_model_is_refused_naming_the_changed_keys(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    resume = _four_steps_then_resume_with(shards_dir, tokenizer_dir, run, capsys)
    err = resume("--model.n_layers=3")
    assert "does not fit the configured model" in err and "model.n_layers: 2 -> 3" in err
    assert "model.d_model" not in err  # only what changed
    assert "Cause: Missing key(s) in state_dict" in err  # the reason, not the header
    d_ff = json.loads((run / "model_config.json").read_text())["d_ff"]  # from the size
    err = resume("--model.d_ff=32")
    assert f"model.d_ff: {d_ff} -> 32)" in err  # the value trained with, not the unset key
    assert "Cause: size mismatch for " in err
    assert list_steps(run / "checkpoints") == [4]  # nothing written
    from pretrain.train.resume_settings import architecture_changes

    other = _config(shards_dir, tokenizer_dir.parent, run, model__n_heads=2)
    assert architecture_changes(run / "config.yaml", other.with_absolute_paths()) == [
        f"data.tokenizer: {str(tokenizer_dir.resolve())!r} -> "
        f"{str(tokenizer_dir.parent.resolve())!r}",
        "model.n_heads: 4 -> 2",
    ]


def test_resume_with_another_optimizer_is_refused_naming_it(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    err = _four_steps_then_resume_with(shards_dir, tokenizer_dir, run, capsys)("--optim.name=muon")
    assert "optimizer state does not fit the configured optimizer (changed since the run " in err
    assert "optim.name: 'adamw' -> 'muon')" in err
    assert list_steps(run / "checkpoints") == [4]  # nothing written
    # The same for a sharded checkpoint (FSDP in a group of one), resumed in a plain process
    sharded = tmp_path / "sharded"
    fsdp = _overrides(shards_dir, tokenizer_dir, sharded, train__max_steps=4,
                      distributed__strategy="fsdp")  # fmt: skip
    assert main(["train", *fsdp]) == 0
    assert (sharded / "checkpoints" / "step_000004" / "dcp").is_dir()
    args = _overrides(shards_dir, tokenizer_dir, sharded, train__max_steps=8, optim__name="muon")
    assert main(["train", *args, "--resume"]) == EXIT_BAD_INPUT
    assert "optim.name: 'adamw' -> 'muon')" in capsys.readouterr().err
    assert list_steps(sharded / "checkpoints") == [4]


def test_muon_trains_at_adamws_learning_rate(shards_dir, tokenizer_dir, tmp_path):
    """Muon's updates are scaled to AdamW's RMS (Liu et al. 2025), so the same lr serves;
    the runs differ (Muon did update the matrices)."""
    final = {}
    for name in ("adamw", "muon"):
        run = tmp_path / name
        Trainer(_config(shards_dir, tokenizer_dir, run, optim__name=name, train__max_steps=30,
                        eval__every_steps=30, checkpoint__every_steps=30)).fit()  # fmt: skip
        losses = [loss for _, loss in _losses(run)]
        assert sum(losses[-5:]) / 5 < losses[0] - 0.5, (name, losses)
        final[name] = sum(losses[-5:]) / 5
    assert final["muon"] != final["adamw"]


def test_resume_with_other_data_settings_is_refused_naming_the_changed_keys(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    """A changed seed (or objective, seq_len, shards) would not continue the sample sequence."""
    run = tmp_path / "run"
    err = _four_steps_then_resume_with(shards_dir, tokenizer_dir, run, capsys)("--train.seed=7")
    assert "data position does not fit the configured data (changed since the run " in err
    assert "train.seed: 0 -> 7)" in err and "Cause: loader state was saved for other" in err
    assert list_steps(run / "checkpoints") == [4]  # nothing written


def test_resume_takes_optimizer_settings_from_the_config(shards_dir, tokenizer_dir, tmp_path):
    """As the learning rate does: the weight decay, betas and eps given when resuming are the
    ones trained with, and the ones the run's config.yaml records."""
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=4)).fit()
    changed = {"optim__weight_decay": 0.5, "optim__betas": "[0.8,0.9]", "optim__eps": 1e-6}
    resumed = Trainer(
        _config(shards_dir, tokenizer_dir, run, train__max_steps=8, **changed), resume=True
    )
    decayed, not_decayed = resumed.optimizer.param_groups
    assert (decayed["weight_decay"], not_decayed["weight_decay"]) == (0.5, 0.0)
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in (decayed, not_decayed))
    assert resumed.optimizer.state  # the moments did come from the checkpoint
    saved = load_config(ExperimentConfig, run / "config.yaml")
    assert saved.optim.weight_decay == 0.5 and saved.optim.betas == (0.8, 0.9)


def test_sigkill_mid_run_then_resume_is_bit_identical(shards_dir, tokenizer_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = dict(train__max_steps=20, checkpoint__every_steps=5, checkpoint__keep_last=3)
    cmd = [sys.executable, "-m", "pretrain.cli", "train"]
    env = dict(os.environ, PRETRAIN_NO_TENSORBOARD="1")
    subprocess.run(
        [*cmd, *_overrides(shards_dir, tokenizer_dir, straight, **args)],
        check=True,
        capture_output=True,
        env=env,
    )
    proc = subprocess.Popen(
        [*cmd, *_overrides(shards_dir, tokenizer_dir, killed, **args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "step_000010").exists():
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list_steps(killed / "checkpoints")[-1] < 20

    resumed = subprocess.run(
        [*cmd, *_overrides(shards_dir, tokenizer_dir, killed, **args), "--resume"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(killed) == _losses(straight)
    assert _losses(killed, "val") == _losses(straight, "val")
    assert not (killed / "plots").exists()  # log.plots: false


def test_corrupt_or_truncated_latest_checkpoint_falls_back_to_the_previous(
    shards_dir, tokenizer_dir, tmp_path, caplog
):
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, checkpoint__keep_last=3)).fit()
    root = run / "checkpoints"
    assert list_steps(root) == [4, 8, 12]
    weights = root / "step_000012" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        ckpt = load_checkpoint(root)
    assert ckpt.step == 8
    assert "step_000012" in caplog.text and "model.safetensors" in caplog.text
    assert "corrupted" in caplog.text

    optim = root / "step_000008" / "optim.pt"
    optim.write_bytes(optim.read_bytes()[:100])
    assert load_checkpoint(root).step == 4
    assert "optim.pt: truncated (100 bytes, expected" in caplog.text  # not the tmp dir's name

    # resuming continues from step 4 and reaches the end
    trainer = Trainer(_config(shards_dir, tokenizer_dir, run, checkpoint__keep_last=3), resume=True)
    assert trainer.state.step == 4
    assert trainer.fit()["step"] == 12
    assert (root / LATEST).read_text().strip() == "step_000012"


def _nan_losses_on_calls(monkeypatch, bad_calls: set[int]) -> set[int]:
    """Make the training loss NaN on the given calls of ``cross_entropy_sum`` (counted from
    1, one a micro-batch); returns the set, which the caller may grow."""
    real_ce = losses_mod.cross_entropy_sum
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        total, count, ce = real_ce(*args, **kwargs)
        if calls["n"] in bad_calls:
            return total * float("nan"), count, ce * float("nan")
        return total, count, ce

    monkeypatch.setattr(losses_mod, "cross_entropy_sum", sometimes_nan)
    return bad_calls


def _optimizer_state(trainer: Trainer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's state (moments, step counts), copied."""
    return [
        t.clone()
        for state in trainer.optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    ]


def _same_state(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_nonfinite_steps_are_skipped_then_training_stops(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    bad_calls = _nan_losses_on_calls(monkeypatch, {5, 6})  # step 3's two micro-batches
    trainer = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "a", eval__every_steps=0))
    trainer.train_step()
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = _optimizer_state(trainer)
    record = trainer.train_step()
    assert record["skipped"] and trainer.state.num_skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert _same_state(moments, _optimizer_state(trainer))  # moments and step count too
    assert not trainer.train_step()["skipped"]
    assert not _same_state(moments, _optimizer_state(trainer))
    assert trainer.state.consecutive_nonfinite == 0

    bad_calls.update(range(9, 1000))
    trainer.cfg.train.max_nonfinite_steps = 3
    taken = []
    with pytest.raises(TrainingError, match="non-finite for 3 steps in a row"):
        while len(taken) < 10:
            taken.append(trainer.state.step)
            trainer.train_step()
    assert len(taken) == 3  # the third bad step in a row stops, not the fourth


def test_fit_counts_skipped_steps_in_its_records_and_checkpoints(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """Through fit(), which reads each step once the next is queued: the records and the
    checkpoints count the skipped steps of their own step, not of the one queued after."""
    from pretrain.train.checkpoint import step_dir_name

    _nan_losses_on_calls(monkeypatch, {5, 6, 7, 8, 13, 14})  # steps 3, 4 and 7 (two a step)
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, train__max_steps=8, eval__every_steps=0)
    Trainer(cfg).fit()
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 2, 2, 2, 3, 3]
    assert [r["tokens"] for r in records] == [256 * s for s in range(1, 9)]
    states = {
        step: json.loads((run / "checkpoints" / step_dir_name(step) / "state.json").read_text())
        for step in (4, 8)
    }
    assert states[4]["trainer"]["num_skipped_steps"] == 2
    assert states[4]["trainer"]["consecutive_nonfinite"] == 2
    assert states[8]["trainer"]["num_skipped_steps"] == 3
    assert states[8]["trainer"]["consecutive_nonfinite"] == 0


def test_a_step_with_an_infinite_gradient_but_a_finite_loss_is_skipped(
    shards_dir, tokenizer_dir, tmp_path
):
    trainer = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "a", eval__every_steps=0))
    trainer.train_step()
    weight = next(p for p in trainer.model.parameters() if p.dim() == 2)
    hook = weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    record = trainer.train_step()
    hook.remove()
    assert math.isfinite(record["loss"]) and not math.isfinite(record["grad_norm"])
    assert record["skipped"] and trainer.state.num_skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert not trainer.train_step()["skipped"]


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_is_skipped_by_either_optimizer_path(
    fused, shards_dir, tokenizer_dir, tmp_path
):
    """The fused AdamW skips on the device (``found_inf``); the for-loop AdamW cannot, so the
    trainer reads the step's values first and does not call it. Either way nothing moves."""
    from pretrain.optim import build_optimizer, skips_updates_on_device

    cfg = _config(shards_dir, tokenizer_dir, tmp_path / "a", eval__every_steps=0)
    trainer = Trainer(cfg)
    trainer.optimizer = build_optimizer(
        trainer.model, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), fused=fused
    )
    assert skips_updates_on_device(trainer.optimizer) == fused
    trainer.train_step()
    weight = next(p for p in trainer.model.parameters() if p.dim() == 2)
    hook = weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = _optimizer_state(trainer)
    assert trainer.train_step()["skipped"]
    hook.remove()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert _same_state(moments, _optimizer_state(trainer))
    assert not trainer.train_step()["skipped"]
    assert not _same_state(moments, _optimizer_state(trainer))


def test_fit_reads_a_step_once_the_next_is_queued_and_at_once_before_saving(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """The host never waits for a step before queuing the next one, except where the step's
    weights are evaluated or saved (every 4 steps here) and at the end: what the trainer did,
    in order."""
    from pretrain.train.step_sums import PendingSums

    events: list[str] = []
    queue_step, result = Trainer.queue_step, PendingSums.result
    evaluate, save = Trainer.evaluate_and_log, Trainer.save

    def queue(self):
        queued = queue_step(self)
        events.append(f"queue {queued.step}")
        return queued

    def read(self):
        if self._result is None:
            events.append("read")
        return result(self)

    monkeypatch.setattr(Trainer, "queue_step", queue)
    monkeypatch.setattr(PendingSums, "result", read)
    monkeypatch.setattr(Trainer, "evaluate_and_log", lambda t: events.append("eval") or evaluate(t))
    monkeypatch.setattr(Trainer, "save", lambda t, v: events.append("save") or save(t, v))
    cfg = _config(shards_dir, tokenizer_dir, tmp_path / "run", train__max_steps=6)
    Trainer(cfg).fit()
    steps = [e for e in events if e.startswith("queue")]
    assert steps == [f"queue {i}" for i in range(1, 7)]
    reads = [i for i, e in enumerate(events) if e == "read"]
    assert len(reads) == 6  # each step read once
    assert events[: events.index("eval")] == [
        "queue 1", "queue 2", "read", "queue 3", "read", "queue 4", "read", "read"
    ]  # fmt: skip
    assert events[events.index("eval") :][:8] == [
        "eval", "save", "queue 5", "queue 6", "read", "read", "eval", "save"
    ]  # fmt: skip
    records = [r["step"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert records == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("every", [3, 0])
def test_fit_collects_garbage_on_its_schedule(
    every, shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """With ``train.gc_every_steps`` the steps run with the automatic collector off and
    generations 0 and 1 are collected after every that many steps; 0 leaves it on."""
    import gc

    events: list[str] = []
    queue_step = Trainer.queue_step

    def queue(self):
        queued = queue_step(self)
        events.append(f"step {queued.step} gc {'on' if gc.isenabled() else 'off'}")
        return queued

    def record(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 1 and not gc.isenabled():
            events.append("collect 1")

    monkeypatch.setattr(Trainer, "queue_step", queue)
    gc.callbacks.append(record)
    try:
        cfg = _config(
            shards_dir, tokenizer_dir, tmp_path / "run", train__max_steps=7,
            train__gc_every_steps=every, eval__every_steps=0, checkpoint__every_steps=0,
        )  # fmt: skip
        Trainer(cfg).fit()
    finally:
        gc.callbacks.remove(record)
    assert gc.isenabled()
    if every:
        assert events == [
            "step 1 gc off", "step 2 gc off", "step 3 gc off", "collect 1", "step 4 gc off",
            "step 5 gc off", "step 6 gc off", "collect 1", "step 7 gc off",
        ]  # fmt: skip
    else:
        assert events == [f"step {i} gc on" for i in range(1, 8)]


def test_compile_mode_reaches_torch_compile_and_cuda_graph_modes_mark_each_step(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    seen = []
    real = compile_mod.compile_for_training
    monkeypatch.setattr(
        compile_mod,
        "compile_for_training",
        lambda model, scope, mode=None: seen.append((scope, mode)) or real(model, scope, mode),
    )
    cfg = _config(
        shards_dir,
        tokenizer_dir,
        tmp_path / "a",
        train__compile=True,
        train__compile_mode="reduce-overhead",
        eval__every_steps=0,
    )
    trainer = Trainer(cfg)
    assert seen == [("blocks", "reduce-overhead")]
    assert not trainer._marks_cudagraph_steps  # CUDA graphs are a CUDA thing
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    trainer._marks_cudagraph_steps = True  # as on CUDA
    for _ in range(2):
        trainer.train_step()
    assert marks == [1, 1]  # once a step, before its micro-batches


def test_config_errors_name_the_key(shards_dir, tokenizer_dir, tmp_path, capsys):
    args = _overrides(shards_dir, tokenizer_dir, tmp_path / "r")
    assert main(["train", *args, "--optim.lrr=1"]) == EXIT_BAD_INPUT
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert main(["train", *args, "--train.tokens_per_batch=100"]) == EXIT_BAD_INPUT
    assert "train.tokens_per_batch=100" in capsys.readouterr().err
    assert main(["train", *args, "--objective.name=mlm"]) == EXIT_BAD_INPUT
    assert "objective.name 'mlm'" in capsys.readouterr().err
    too_long = ["--train.seq_len=4096", "--train.tokens_per_batch=16384"]
    assert main(["train", *args, *too_long]) == EXIT_BAD_INPUT
    assert "max_seq_len" in capsys.readouterr().err
    for bad, message in [
        ("--train.device=foo", "train.device must be 'auto' or a torch device"),
        ("--optim.betas=[0.9]", "'optim.betas' must have 2 items"),
        ("--optim.betas=[0.9,1.5]", "optim.betas[1] must be in [0, 1)"),
        ("--optim.eps=0", "optim.eps must be > 0"),
        ("--optim.min_lr_ratio=-1", "optim.min_lr_ratio must be in [0, 1]"),
        ("--optim.decay_fraction=2", "optim.decay_fraction must be in [0, 1]"),
        ("--train.max_minutes=-1", "train.max_minutes must be > 0"),
        ("--objective.noise_density=1", "objective.noise_density must be in (0, 1)"),
        ("--objective.mean_noise_span_length=0.5", "mean_noise_span_length must be >= 1"),
        ("--objective.mlm_max_predictions=20", "set objective.exact_count=true too"),
        ("--objective.mlm_probability=0", "objective.mlm_probability must be in (0, 1]"),
        ("--objective.random_replace_prob=-0.1", "objective.random_replace_prob must be in"),
        ("--objective.mask_replace_prob=0.95", "mask_replace_prob + objective.random_replace"),
        ("--objective.prefix_noise_density=1.5", "prefix_noise_density must be in (0, 0.5]"),
        ("--objective.mixture=[{name: clm}]", "applies with objective.name=mixture only"),
        ("--train.max_steps=[1", "override '--train.max_steps=[1': the value is not valid YAML"),
    ]:
        assert main(["train", *args, bad]) == EXIT_BAD_INPUT, bad
        assert message in capsys.readouterr().err, bad
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_fresh_run_into_a_directory_with_checkpoints_is_refused(
    shards_dir, tokenizer_dir, tmp_path
):
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=4)).fit()
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=4))
    state = json.loads((run / "checkpoints" / "step_000004" / "state.json").read_text())
    assert state["trainer"]["step"] == 4 and state["loader"]["num_samples_consumed"] == 32


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("scope,budget", [("blocks", 1.0), ("blocks", 0.5), ("model", 1.0)])
def test_compiled_training_matches_eager(shards_dir, tokenizer_dir, tmp_path, scope, budget):
    """Both compile scopes, and under an activation memory budget: what is recomputed has
    the same values. Compiled block by block, one graph serves every block of the stack."""
    eager = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "eager", train__max_steps=3))
    compiled = Trainer(
        _config(
            shards_dir,
            tokenizer_dir,
            tmp_path / "compiled",
            train__max_steps=3,
            train__compile=True,
            train__compile_scope=scope,
            train__activation_memory_budget=budget,
            eval__every_steps=0,
        )
    )
    seen = []  # the budget AOTAutograd reads while the compiled forward runs
    compiled.model.register_forward_pre_hook(
        lambda *_: seen.append(functorch_config.activation_memory_budget)
    )
    counters.clear()
    for _ in range(3):
        a, b = eager.train_step(), compiled.train_step()
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert seen and set(seen) == {budget}
    assert functorch_config.activation_memory_budget == 1.0  # and only then
    assert len(compiled.model.blocks) > 1
    # the loss's chunk, and the whole model or one block's graph that every block runs
    assert counters["stats"]["unique_graphs"] == 2
    compiled_blocks = [b._compiled_call_impl is not None for b in compiled.model.blocks]
    assert compiled_blocks == [scope == "blocks"] * len(compiled.model.blocks)
    # Sampling runs the blocks eager: a KV cache that grows would recompile them every step.
    generate(compiled.model, torch.tensor([1, 2, 3]), max_new_tokens=4, temperature=0.0)
    assert counters["stats"]["unique_graphs"] == 2


def test_next_steps_batches_are_drawn_ahead_and_a_failed_draw_fails_that_step(
    shards_dir, tokenizer_dir, tmp_path
):
    """A step draws the next step's micro-batches before it waits for its own loss. If that
    draw fails, the step still completes and the error comes from the step that needed them;
    the last step draws nothing ahead."""
    trainer = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "r", train__max_steps=3))
    draw, calls = trainer.batches.objective, []

    def objective(token_batch, generator):
        calls.append(trainer.state.step)  # the step running when the batch is drawn
        if len(calls) == 2 * trainer.grad_accum + 1:
            raise ValueError("bad window")
        return draw(token_batch, generator)

    trainer.batches.objective = objective
    trainer.train_step()
    assert calls == [0] * (2 * trainer.grad_accum)  # step 1's batches, then step 2's ahead
    trainer.train_step()  # its draw of step 3's batches fails
    assert trainer.state.step == 2
    with pytest.raises(ValueError, match="bad window"):
        trainer.train_step()
    assert trainer.state.step == 2
    calls.clear()

    def counting(token_batch, generator):
        calls.append(trainer.state.step)
        return draw(token_batch, generator)

    trainer.batches.objective = counting
    trainer.train_step()  # step 3, the last: its own batches, none ahead
    assert trainer.state.step == 3 and calls == [2] * trainer.grad_accum


def test_grad_clip_zero_means_no_clipping(shards_dir, tokenizer_dir, tmp_path):
    def one_step_update(clip: float) -> dict[str, torch.Tensor]:
        trainer = Trainer(
            _config(
                shards_dir, tokenizer_dir, tmp_path / str(clip), optim__grad_clip=clip,
                optim__weight_decay=0.0, eval__every_steps=0,
            )
        )  # fmt: skip
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()
        return {k: v - before[k] for k, v in trainer.model.state_dict().items()}

    unclipped, huge = one_step_update(0.0), one_step_update(1e9)
    assert all(torch.equal(unclipped[k], huge[k]) for k in huge)
    assert any(v.abs().max() > 0 for v in unclipped.values())


def test_bad_val_directory_fails_before_training(shards_dir, tokenizer_dir, tmp_path):
    with pytest.raises(Exception, match="no manifest"):
        Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "r", data__val=str(tmp_path)))


def test_resuming_a_finished_run_adds_no_duplicate_lines(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=8)).fit()
    before = read_metrics(run)
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=8), resume=True).fit()
    after = read_metrics(run)
    assert after == before
    keys = [(r["step"], r["split"]) for r in after]
    assert len(keys) == len(set(keys))


def test_bf16_autocast_trains_on_cpu_close_to_fp32(shards_dir, tokenizer_dir, tmp_path):
    fp32 = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "a", eval__every_steps=0))
    bf16 = Trainer(
        _config(
            shards_dir, tokenizer_dir, tmp_path / "b", eval__every_steps=0,
            train__precision="bf16",
        )
    )  # fmt: skip
    assert bf16.autocast_dtype == torch.bfloat16
    for _ in range(3):
        a, b = fp32.train_step(), bf16.train_step()
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # fp32 master weights


def test_activation_checkpointing_recomputes_blocks_with_the_same_losses(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    import torch.utils.checkpoint as ckpt_mod

    from pretrain.distributed import parallelize

    calls = []
    real = ckpt_mod.checkpoint
    monkeypatch.setattr(parallelize, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "plain", train__max_steps=3))
    checkpointed = Trainer(
        _config(
            shards_dir, tokenizer_dir, tmp_path / "ac", train__max_steps=3,
            distributed__activation_checkpointing=True,
        )
    )  # fmt: skip
    for _ in range(3):
        assert checkpointed.train_step()["loss"] == plain.train_step()["loss"]
    assert len(calls) == 3 * checkpointed.grad_accum * len(checkpointed.model.blocks)
    for a, b in zip(plain.model.parameters(), checkpointed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mfu_counts_the_batches_flops_over_the_peak(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    from pretrain.models.spec import matmul_params
    from pretrain.scaling.flops import flops_per_token

    peak = 1e12
    monkeypatch.setattr(trainer_mod, "peak_flops", lambda device: peak)
    trainer = Trainer(_config(shards_dir, tokenizer_dir, tmp_path / "run", train__max_steps=3))
    trainer.fit()
    cfg, T = trainer.model.cfg, 32
    per_token = flops_per_token(
        matmul_params(trainer.model), cfg.n_layers, cfg.n_heads, cfg.head_dim, T
    )  # CLM labels every input token: PaLM's count
    records = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert len(records) == 3
    for r in records:  # mfu / (tokens/s) = FLOPs per token / peak, whatever the timing
        assert r["mfu"] / r["tokens_per_second"] == pytest.approx(per_token / peak, rel=1e-9)


def test_tokens_per_second_counts_each_step_once_and_no_evaluation_or_checkpoint(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """On a clock where each step takes 1 s and each evaluation or checkpoint 100 s, every
    record reads 256 tokens/s, also when steps are read at once (every 2 steps here) and
    when logging every step or every 3."""
    import types

    clock = {"now": 0.0}
    monkeypatch.setattr(
        trainer_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"])
    )

    def taking(seconds: float, method):
        def timed(self, *args):
            clock["now"] += seconds
            return method(self, *args)

        return timed

    for name, seconds in (("queue_step", 1.0), ("evaluate_and_log", 100.0), ("save", 100.0)):
        monkeypatch.setattr(Trainer, name, taking(seconds, getattr(Trainer, name)))
    for every in (1, 3):
        run = tmp_path / f"log{every}"
        overrides = dict(eval__every_steps=2, checkpoint__every_steps=2, log__every_steps=every)
        Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=7, **overrides)).fit()
        records = [r for r in read_metrics(run) if r["split"] == "train"]
        assert [r["step"] for r in records] == ([1, 2, 3, 4, 5, 6, 7] if every == 1 else [3, 6, 7])
        assert [r["tokens_per_second"] for r in records] == pytest.approx([256.0] * len(records))


def test_schedule_settings_reach_the_logged_learning_rate(shards_dir, tokenizer_dir, tmp_path):
    """WSD with optim.decay_fraction=0.5 and optim.min_lr_ratio=0.2 over 12 steps: warmup 2,
    stable to step 6, then 0.2 + 0.8 (1 - sqrt((s + 1 - 6) / 6)) of the peak (0-based step s):
    the last step at 0.2 of it."""
    run = tmp_path / "run"
    overrides = dict(optim__schedule="wsd", optim__decay_fraction=0.5, optim__min_lr_ratio=0.2)
    Trainer(_config(shards_dir, tokenizer_dir, run, log__every_steps=1, **overrides)).fit()
    logged = [r["lr"] for r in read_metrics(run) if r["split"] == "train"]
    peak = 3e-3
    want = [peak / 2, peak, peak, peak, peak, peak]
    want += [peak * (0.2 + 0.8 * (1 - ((s + 1 - 6) / 6) ** 0.5)) for s in range(6, 12)]
    assert logged == pytest.approx(want, rel=1e-9)
    assert logged[-1] == pytest.approx(0.2 * peak)


def test_best_points_at_the_lowest_val_loss_and_survives_pruning(
    shards_dir, tokenizer_dir, tmp_path
):
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, checkpoint__keep_last=1, eval__every_steps=0)
    trainer = Trainer(cfg)
    for step, val_loss in ((1, 5.0), (2, 4.0), (3, 4.5), (4, None)):  # step 4: not evaluated
        trainer.state.step = step
        last_val = None if val_loss is None else {"step": step, "loss": val_loss}
        trainer.save(last_val)
    ckpts = run / "checkpoints"
    assert (ckpts / "best").read_text().strip() == "step_000002"
    assert (ckpts / LATEST).read_text().strip() == "step_000004"
    assert list_steps(ckpts) == [2, 4]  # keep_last=1, plus the best
    assert trainer.state.best_val_loss == 4.0


def test_the_last_step_is_logged_between_logging_intervals(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, train__max_steps=6, log__every_steps=4)
    Trainer(cfg).fit()
    assert [s for s, _ in _losses(run)] == [4, 6]


def test_a_run_dir_another_process_trains_in_is_refused(shards_dir, tokenizer_dir, tmp_path):
    """Say ``--resume`` while the first run still trains: two trainers would interleave their
    checkpoints and rewrite each other's metrics.jsonl."""
    run = tmp_path / "run"
    holder = hold_run_dir_lock(run)
    try:
        with pytest.raises(TrainingError, match=f"{run} is in use by .*pid {holder.pid} "):
            Trainer(_config(shards_dir, tokenizer_dir, run), resume=False)
    finally:
        holder.kill()
        holder.wait()
    summary = Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=2)).fit()
    assert summary["step"] == 2
