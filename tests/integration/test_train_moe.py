"""A mixture-of-experts decoder end to end: it trains, resumes bit for bit, and exports as
Hugging Face's Mixtral with the same logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pretrain.runs import load_run
from pretrain.train.checkpoint import step_dir_name
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.helpers import losses
from tests.integration.test_train import _config

MOE = dict(model__n_experts=4, model__experts_per_token=2, model__d_ff=64)


def test_a_mixture_of_experts_trains_resumes_exactly_and_exports_as_mixtral(
    shards_dir: Path, tokenizer_dir: Path, tmp_path: Path
):
    run = tmp_path / "run"
    Trainer(_config(shards_dir, tokenizer_dir, run, train__max_steps=16, **MOE)).fit()
    straight = losses(run)
    assert len(straight) == 16
    # the balancing loss added, logged apart from the cross-entropy: 0.01 * (k=2 when even)
    routed = [r["router_loss"] for r in read_metrics(run) if r["split"] == "train"]
    assert len(routed) == 16 and all(0.01 * 1.9 < v < 0.01 * 4 for v in routed), routed
    assert sum(v for _, v in straight[-4:]) / 4 < sum(v for _, v in straight[:4]) / 4 - 0.3

    shutil.rmtree(run / "checkpoints" / step_dir_name(16))  # back to step 12, then on again
    config = _config(shards_dir, tokenizer_dir, run, train__max_steps=16, **MOE)
    Trainer(config, resume=True).fit()
    assert losses(run) == straight

    loaded = load_run(run)
    assert loaded.model.blocks[0].mlp.gate_up.shape == (4, 128, 64)
    transformers = pytest.importorskip("transformers")
    from pretrain.models.spec import to_hf

    hf = to_hf(loaded.model, "decoder")
    assert isinstance(hf, transformers.MixtralForCausalLM)
    x = torch.randint(0, loaded.model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        ours = loaded.model.logits(loaded.model.forward_tokens(x))
        assert (ours - hf(x).logits).abs().max().item() < 1e-5
