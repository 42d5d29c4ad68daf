"""Training skips a step whose loss spikes (``train.spike_sigma``), and resumes doing so."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain import losses as losses_mod
from pretrain.train.checkpoint import step_dir_name
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.helpers import losses, straight_and_resumed
from tests.integration.test_train import _config, _optimizer_state, _same_state

SPIKE = {"train.spike_sigma": 6, "train.spike_window_steps": 8}  # decides from step 5 on


def _spike_on_steps(monkeypatch, steps: set[int], factor: float = 100.0) -> None:
    """Multiply the loss of every micro-batch of the given optimizer steps (counted from 1)."""
    real_ce, real_queue = losses_mod.cross_entropy_sum, Trainer.queue_step
    current = {"step": 0}

    def queue_step(self):
        current["step"] = self.state.step + 1
        return real_queue(self)

    def spiky_ce(*args, **kwargs):
        total, count, ce = real_ce(*args, **kwargs)
        if current["step"] in steps:
            return total * factor, count, ce * factor
        return total, count, ce

    monkeypatch.setattr(Trainer, "queue_step", queue_step)
    monkeypatch.setattr(losses_mod, "cross_entropy_sum", spiky_ce)


def _settings(**extra) -> dict:
    return {k.replace(".", "__"): v for k, v in {**SPIKE, **extra}.items()}


@pytest.mark.parametrize("sigma, fused", [(6, True), (6, False), (0, True)])
def test_a_spiking_step_is_skipped_only_with_spike_sigma(
    sigma, fused, shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """The fused AdamW skips on the device; the for-loop AdamW is not called."""
    from pretrain.optim import build_optimizer

    _spike_on_steps(monkeypatch, {7})
    settings = _settings(**{"train.spike_sigma": sigma, "eval.every_steps": 0})
    cfg = _config(shards_dir, tokenizer_dir, tmp_path / "run", **settings)
    trainer = Trainer(cfg)
    trainer.optimizer = build_optimizer(
        trainer.model, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), fused=fused
    )
    records = [trainer.train_step() for _ in range(6)]
    assert not any(r["skipped"] for r in records)  # no false alarm while the loss falls
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = _optimizer_state(trainer)
    record = trainer.train_step()
    weights_kept = all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    if sigma:
        assert record["skipped"] and weights_kept
        assert _same_state(moments, _optimizer_state(trainer))  # moments, step count
        assert trainer.state.num_spike_steps == trainer.state.num_skipped_steps == 1
        assert trainer.state.consecutive_nonfinite == 0
    else:  # without the check the spike is applied
        assert not record["skipped"] and not weights_kept
        assert trainer.state.num_skipped_steps == 0
    assert not trainer.train_step()["skipped"]


def test_fit_logs_spikes_and_a_resumed_run_skips_what_a_straight_one_skips(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch, caplog
):
    """The resumed run starts at step 8's checkpoint; with a window started afresh it would
    decide nothing before step 13 (it needs 4 steps) and apply step 11's spike."""
    _spike_on_steps(monkeypatch, {11})

    def config_for(run):
        return _config(shards_dir, tokenizer_dir, run, **_settings(), eval__every_steps=0)

    with caplog.at_level("WARNING", logger="pretrain.train.trainer"):
        straight, crashed = straight_and_resumed(config_for, tmp_path, monkeypatch, 10)
    assert losses(crashed) == losses(straight)
    records = [r for r in read_metrics(straight) if r["split"] == "train"]
    assert [r["spike_steps"] for r in records] == [0] * 10 + [1, 1]
    assert [r["skipped_steps"] for r in records] == [0] * 10 + [1, 1]
    assert "step 11: the loss" in caplog.text and "the update is skipped" in caplog.text
    state = json.loads((crashed / "checkpoints" / step_dir_name(8) / "state.json").read_text())
    assert sum(state["spikes"]["filled"]) == 8 and state["spikes"]["next_slot"] == 0
    final = json.loads((crashed / "checkpoints" / step_dir_name(12) / "state.json").read_text())
    assert final["trainer"]["num_spike_steps"] == 1


def test_a_window_of_another_size_on_resume_starts_empty(
    shards_dir, tokenizer_dir, tmp_path, caplog
):
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, **_settings(), train__max_steps=4)).fit()
    other = _settings(**{"train.spike_window_steps": 16})
    cfg = _config(shards_dir, tokenizer_dir, run, **other, train__max_steps=6)
    with caplog.at_level("WARNING", logger="pretrain.train.trainer"):
        trainer = Trainer(cfg, resume=True)
    assert "train.spike_window_steps is 16; the spike window starts empty" in caplog.text
    assert trainer.spikes.window == 16 and not trainer.spikes.filled.any()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.spike_sigma", -1, "train.spike_sigma must be >= 0"),
        ("train.spike_window_steps", 1, "train.spike_window_steps must be >= 2"),
    ],
)
def test_bad_spike_settings_name_the_key(shards_dir, tokenizer_dir, tmp_path, key, value, message):
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _config(shards_dir, tokenizer_dir, tmp_path, **{key.replace(".", "__"): value}).validate()
