"""Permutation LM end to end: XLNet trains from the CLI, resumes exactly with a new order per
sample, evaluates, and exports to XLNetLMHeadModel."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.cli import main
from pretrain.config import ExperimentConfig, load_config
from pretrain.runs import load_run
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.helpers import losses as _losses
from tests.helpers import straight_and_resumed
from tests.integration.test_train import _overrides

PLM = ["--model.family=xlnet", "--objective.name=plm", "--optim.lr=2e-3"]


def _args(shards_dir, tokenizer_dir, run, **kw) -> list[str]:
    return [*_overrides(shards_dir, tokenizer_dir, run, **kw), *PLM]


def test_plm_resume_is_exact_with_a_new_order_per_sample(
    shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    cfg = lambda run: load_config(ExperimentConfig, None, _args(shards_dir, tokenizer_dir, run))  # noqa: E731
    straight, crashed = straight_and_resumed(cfg, tmp_path, monkeypatch)
    assert len(_losses(straight)) == 12
    assert _losses(crashed) == _losses(straight)
    assert _losses(crashed, "val") == _losses(straight, "val")


def test_plm_run_evaluates_and_exports_to_xlnet(shards_dir, tokenizer_dir, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "run"
    Trainer(load_config(ExperimentConfig, None, _args(shards_dir, tokenizer_dir, run))).fit()
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json", "--max-batches", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(_losses(run, "val")[-1][1], rel=1e-6)
    val_record = [r for r in read_metrics(run) if r["split"] == "val"][-1]
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == pytest.approx(val_record["accuracy"], rel=1e-9)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.XLNetLMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours = load_run(run).model
    T = 32
    x = torch.randint(200, 1000, (2, T))
    perm = torch.rand(2, T, T) < 0.5
    perm.diagonal(dim1=1, dim2=2).fill_(True)
    tm = torch.eye(T)[torch.tensor([3, 9, 17])].expand(2, 3, T)
    from pretrain.objectives.base import AttentionSpec

    with torch.no_grad():
        _, g = ours.streams(x, AttentionSpec("permutation", permutation_mask=perm), tm)
        theirs = hf(x, perm_mask=perm.float(), target_mapping=tm).logits
    torch.testing.assert_close(theirs, ours.logits(g), atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["generate", "--run", str(run), "--prompt", "x"]) == 2
    assert "use the Hugging Face XLNetLMHeadModel" in capsys.readouterr().err


def test_rope_xlnet_trains_resumes_and_refuses_hf_export(
    shards_dir, tokenizer_dir, tmp_path, capsys, monkeypatch
):
    rope = ["--model.position_encoding=rope"]
    cfg = lambda run: load_config(  # noqa: E731
        ExperimentConfig, None, [*_args(shards_dir, tokenizer_dir, run), *rope]
    )
    straight, crashed = straight_and_resumed(cfg, tmp_path, monkeypatch)
    losses = [loss for _, loss in _losses(straight)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # learning
    assert _losses(crashed) == _losses(straight)
    capsys.readouterr()
    assert main(["export", "--run", str(straight), "--out", str(tmp_path / "hf")]) != 0
    assert "position_encoding='rope'" in capsys.readouterr().err


def test_flex_on_cpu_and_position_encoding_off_xlnet_are_refused(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    flex = [*_args(shards_dir, tokenizer_dir, tmp_path / "a"), "--model.attention_backend=flex"]
    assert main(["train", *flex, "--train.device=cpu"]) != 0
    assert "attention_backend=flex trains on CUDA only" in capsys.readouterr().err
    decoder = [
        *_overrides(shards_dir, tokenizer_dir, tmp_path / "b"),
        "--model.position_encoding=rope",
    ]
    assert main(["train", *decoder]) != 0
    assert "position_encoding" in capsys.readouterr().err
