"""Every shipped config validates as written and trains 30 steps from the CLI at debug size on
CPU, with falling loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.cli import main
from pretrain.config import ExperimentConfig, load_config
from pretrain.train.metrics import read_metrics

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_validates_as_shipped(config):
    """The shipped lengths and batch sizes, which the training test below overrides, are valid
    (UL2 refuses a train.seq_len whose windows need more sentinels than the tokenizer has)."""
    load_config(ExperimentConfig, config).validate()


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_trains_with_falling_loss(config, shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    argv = [
        "train", "--config", str(config),
        "--model.size=debug", "--model.d_model=64", "--model.n_layers=2", "--model.n_heads=4",
        f"--data.train=[{shards_dir}]", f"--data.val={shards_dir}",
        f"--data.tokenizer={tokenizer_dir}", f"--run.dir={run}",
        "--train.seq_len=64", "--train.micro_batch_size=8", "--train.tokens_per_batch=512",
        "--train.max_steps=30", "--optim.warmup_steps=5", "--optim.lr=3e-3",
        "--eval.every_steps=15", "--eval.max_batches=4", "--checkpoint.every_steps=30",
        "--log.every_steps=1", "--log.progress=false",
        "--log.plots=false", "--log.tensorboard=false",
    ]  # fmt: skip
    assert main(argv) == 0
    losses = [r["loss"] for r in read_metrics(run) if r["split"] == "train"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert (run / "checkpoints" / "latest").exists()
