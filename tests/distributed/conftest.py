"""The reference run every module of ``tests/distributed`` compares with, made once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pretrain.config import ExperimentConfig, load_config
from pretrain.train.trainer import Trainer
from tests.distributed.test_data_parallel import _overrides


@pytest.fixture(scope="session")
def single_run(tmp_path_factory, shards_dir, tokenizer_dir) -> Path:
    """The reference: one process, 4 micro-batches a step (tests read it, never write it)."""
    run = tmp_path_factory.mktemp("single") / "run"
    torch.set_num_threads(1)
    try:
        cfg = load_config(ExperimentConfig, None, _overrides(shards_dir, tokenizer_dir, run))
        Trainer(cfg).fit()
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return run
