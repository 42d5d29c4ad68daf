"""Per-task losses under data parallelism cover every rank: a mixture's task losses, weighted
by their label tokens, give the step's loss (which is summed over ranks), for training steps
and evaluations alike."""

from __future__ import annotations

import pytest

from pretrain.train.metrics import read_metrics
from tests.distributed.test_data_parallel import _overrides, _torchrun

pytestmark = pytest.mark.distributed

MIX = [
    "--objective.name=mixture",
    "--objective.mixture=[{name: clm, weight: 1}, {name: prefix_lm, weight: 1}]",
]


def test_mixture_task_losses_add_up_to_the_loss_of_all_ranks(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    args = _overrides(shards_dir, tokenizer_dir, run, distributed__strategy="ddp")
    _torchrun(["-m", "pretrain", "train"], [*args, *MIX])
    records = read_metrics(run)
    assert {r["split"] for r in records} == {"train", "val"}
    for record in records:
        tasks = record["tasks"]
        total = sum(t["tokens"] * t["loss"] for t in tasks.values())
        tokens = sum(t["tokens"] for t in tasks.values())
        assert total / tokens == pytest.approx(record["loss"], rel=1e-5), record
        if record["split"] == "val":  # every rank's label tokens counted once, by task
            assert tokens == record["tokens_evaluated"], record
