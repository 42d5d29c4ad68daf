"""Context parallelism on CPU with gloo: a sequence split over 2 ranks (chunks 0 and 3 on one,
1 and 2 on the other) attends as the whole sequence does, with packed documents, a prefix,
grouped-query heads, learned positions and a bidirectional encoder; 2 such ranks under FSDP
train as one process, and their checkpoint resumes on 2 DDP ranks without context
parallelism."""

from __future__ import annotations

import json
import shutil

import pytest

from pretrain.train.checkpoint import STATE_FILE, step_dir_name
from tests.distributed.test_data_parallel import (
    REPO,
    STEPS,
    _assert_same_run,
    _overrides,
    _torchrun,
)
from tests.distributed.test_tensor_parallel import SAVED_AT, _assert_same_counts

pytestmark = pytest.mark.distributed

CHECK = str(REPO / "tests" / "distributed" / "check_context_parallel.py")


def test_a_split_sequence_attends_and_learns_as_the_whole_one(tmp_path):
    """Llama 3's load balance (Dubey et al. 2024, §3.3.2): rank r holds chunks r and 2C-1-r.
    (A BERT encoder too: its bidirectional mask within documents is read at those positions.)
    Per block, the keys and the values are all-gathered in the forward and their gradients
    reduce-scattered in the backward; nothing else is exchanged. Greedy decoding, whose
    batches are not split, is the whole model's."""
    _torchrun([CHECK, str(tmp_path)], [])
    held = {0: [0, 1, 2, 3, 12, 13, 14, 15], 1: [4, 5, 6, 7, 8, 9, 10, 11]}
    for rank, positions in held.items():
        facts = json.loads((tmp_path / f"context_rank{rank}.json").read_text())
        assert set(facts) == {"llama_documents", "llama_prefix", "gpt2_causal", "bert_documents"}
        for name, case in facts.items():
            assert case["positions"] == positions
            assert case["hidden_abs"] < 1e-5
            assert case["grad_rel"] < 1e-5
            per_direction = 2 * case["n_layers"]  # keys and values, every block
            assert case["collectives"] == {
                "all_gather_into_tensor": per_direction,
                "reduce_scatter_tensor": per_direction,
            }
            assert case["greedy_equal"] is (None if name.startswith("bert") else True)


def test_two_context_parallel_ranks_under_fsdp_train_as_one_process(
    single_run,
    shards_dir,
    tokenizer_dir,
    tmp_path,
):
    """Both ranks read the same batches, each computes the loss of its positions; FSDP
    shards the weights over both and averages their gradients: one process's losses, gradient
    norms and weights, and the tokens and validation counted once. The weights are not split,
    so the checkpoint resumes without context parallelism: 2 plain DDP ranks, which read
    different batches from there, finish like one process."""
    run = tmp_path / "run"
    cp = {"distributed__strategy": "fsdp", "distributed__context_parallel_degree": 2}
    _torchrun(["-m", "pretrain", "train"], _overrides(shards_dir, tokenizer_dir, run, **cp))
    _assert_same_run(run, single_run)
    _assert_same_counts(run, single_run)
    saved = json.loads((run / "checkpoints" / step_dir_name(SAVED_AT) / STATE_FILE).read_text())
    assert saved["context_parallel_degree"] == 2

    shutil.rmtree(run / "checkpoints" / step_dir_name(STEPS))
    ddp = _overrides(shards_dir, tokenizer_dir, run, distributed__strategy="ddp")
    _torchrun(["-m", "pretrain", "train"], [*ddp, "--resume"])
    _assert_same_run(run, single_run)
    _assert_same_counts(run, single_run)
    resumed = json.loads((run / "checkpoints" / step_dir_name(STEPS) / STATE_FILE).read_text())
    assert resumed["context_parallel_degree"] == 1 and resumed["world_size"] == 2
