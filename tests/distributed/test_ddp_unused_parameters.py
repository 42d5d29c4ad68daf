"""DDP with a model whose forward leaves parameters out (XLNet's segment terms)."""

from __future__ import annotations

import pytest

from pretrain.train.metrics import read_metrics
from tests.distributed.test_data_parallel import _torchrun

pytestmark = pytest.mark.distributed


def test_xlnet_trains_under_ddp(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    args = [
        "--config=configs/xlnet-plm.yaml", "--model.size=debug", f"--data.train=[{shards_dir}]",
        f"--data.val={shards_dir}", f"--data.tokenizer={tokenizer_dir}",
        "--train.max_steps=3", "--train.seq_len=48", "--train.micro_batch_size=2",
        "--train.tokens_per_batch=192", "--eval.max_batches=1", "--eval.every_steps=0",
        "--distributed.strategy=ddp", f"--run.dir={run}", "--log.progress=false",
        "--log.plots=false",
        "--log.every_steps=1",
    ]  # fmt: skip
    _torchrun(["-m", "pretrain", "train"], args)  # without find_unused_parameters: step 2 fails
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3]
