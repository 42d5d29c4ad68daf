"""Objective mixtures and UL2 in the trainer: loss and tokens per task in metrics.jsonl and in
`pretrain eval`, exact resume with per-example draws."""

from __future__ import annotations

import json

from pretrain.cli import main
from pretrain.config import ExperimentConfig, load_config
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.helpers import straight_and_resumed
from tests.integration.test_train import _overrides

MIX = [
    "--objective.name=mixture",
    "--objective.mixture=[{name: clm, weight: 1}, {name: prefix_lm, weight: 1}]",
]


def _config(shards_dir, tokenizer_dir, run, extra=MIX, **kw) -> ExperimentConfig:
    args = [*_overrides(shards_dir, tokenizer_dir, run, **kw), *extra]
    return load_config(ExperimentConfig, None, args)


def _records(run, split="train"):
    return [r for r in read_metrics(run) if r["split"] == split]


def test_mixture_logs_loss_and_tokens_per_task(shards_dir, tokenizer_dir, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run)).fit()
    for record in _records(run) + _records(run, "val"):
        tasks = record["tasks"]
        assert set(tasks) <= {"clm", "prefix_lm"} and tasks
        total = sum(t["tokens"] * t["loss"] for t in tasks.values())
        tokens = sum(t["tokens"] for t in tasks.values())
        assert abs(total / tokens - record["loss"]) < 1e-5 * record["loss"]
    seen = {name for r in _records(run) for name in r["tasks"]}
    assert seen == {"clm", "prefix_lm"}
    val = _records(run, "val")[-1]
    assert val["tokens_evaluated"] == sum(t["tokens"] for t in val["tasks"].values())
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json", "--max-batches", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tasks"] == val["tasks"]  # the same fixed draws as the last evaluation


def test_mixture_resume_is_exact(shards_dir, tokenizer_dir, tmp_path, monkeypatch):
    config_for = lambda run: _config(shards_dir, tokenizer_dir, run)  # noqa: E731
    straight, crashed = straight_and_resumed(config_for, tmp_path, monkeypatch)
    assert _records(crashed) == [
        {**r, "tokens_per_second": c["tokens_per_second"]}
        for r, c in zip(_records(straight), _records(crashed), strict=True)
    ]


def test_ul2_reports_each_denoiser(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    ul2 = ["--objective.name=ul2", "--train.seq_len=64", "--train.tokens_per_batch=512"]
    Trainer(_config(shards_dir, tokenizer_dir, run, extra=ul2, train__max_steps=6)).fit()
    names = {name for r in _records(run) for name in r["tasks"]}
    assert names and all(n[0] in "RXS" and "(" in n for n in names)
    assert len(names) >= 4  # 6 steps x 8 examples over 7 denoisers
