"""Pipeline parallelism on CPU with gloo: the blocks split over 2 stages (1F1B, tied embeddings
kept equal across the first and last stage) compute what one process computes; saved there,
the run resumes on 4 ranks (2 pipeline ranks x 2 data-parallel ranks, under DDP on GPipe and
under FSDP on interleaved 1F1B with 2 stages a rank) at exactly the next sample, a
pipeline's ranks reading the same batches, and in one process from the same sharded
checkpoint; a checkpoint without shards is refused by a pipeline, with the way out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.config import ExperimentConfig, load_config
from pretrain.train.checkpoint import MODEL_FILE, SHARDED_DIR, STATE_FILE, step_dir_name
from pretrain.train.errors import TrainingError
from pretrain.train.run_checkpoint import load_run_checkpoint
from pretrain.train.trainer import Trainer
from tests.distributed.test_data_parallel import (
    REPO,
    STEPS,
    _assert_same_run,
    _losses,
    _overrides,
    _torchrun,
)
from tests.distributed.test_tensor_parallel import _assert_same_counts

pytestmark = pytest.mark.distributed

RECORD = str(REPO / "tests" / "distributed" / "record_samples.py")
SAVED_AT = 5  # checkpoint.every_steps of _overrides
GLOBAL_BATCH = 8  # windows a step


FOUR_BLOCKS = {"model__n_layers": 4}  # 4 stages of one block on the interleaved schedule


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards_dir, tokenizer_dir) -> Path:
    """The runs below in one process."""
    run = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)  # as the ranks run
    try:
        args = _overrides(shards_dir, tokenizer_dir, run, **FOUR_BLOCKS)
        Trainer(load_config(ExperimentConfig, None, args)).fit()
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return run


def test_two_stages_equal_one_process_and_resume_on_four_ranks_and_on_one(
    reference, shards_dir, tokenizer_dir, tmp_path
):
    run = tmp_path / "run"
    pipeline = {
        **FOUR_BLOCKS,
        "distributed__strategy": "ddp",
        "distributed__pipeline_parallel_degree": 2,
    }
    _torchrun(["-m", "pretrain", "train"], _overrides(shards_dir, tokenizer_dir, run, **pipeline))
    # Four micro-batches a step through the two stages: one process's losses, gradient norms
    # (the tied embedding's gradient counted once), validation and, gathered from both
    # stages, weights (the tied embedding's copies still one).
    _assert_same_run(run, reference)
    _assert_same_counts(run, reference)
    assert not (run / "samples.txt").exists()  # no rank holds the whole model to sample
    saved = json.loads((run / "checkpoints" / step_dir_name(SAVED_AT) / STATE_FILE).read_text())
    assert saved["pipeline_parallel_degree"] == 2
    sharded = run / "checkpoints" / step_dir_name(STEPS) / SHARDED_DIR
    assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in sharded.iterdir()}

    # Resumed from step 5 on 4 ranks, each stage on 2 data-parallel ranks: under DDP on GPipe,
    # then under FSDP on the interleaved schedule, each rank holding two stages of one block
    # (rank 0: stages 0 and 2). The optimizer state, saved per parameter by the stage that
    # holds it, is read back by name (and resharded).
    resumes = {
        "ddp": {"distributed__pipeline_schedule": "gpipe"},
        "fsdp": {
            "distributed__pipeline_schedule": "interleaved_1f1b",
            "distributed__pipeline_stages_per_rank": 2,
        },
    }
    blocks = {"ddp": [[0, 1], [0, 1], [2, 3], [2, 3]], "fsdp": [[0, 2], [0, 2], [1, 3], [1, 3]]}
    for strategy, schedule in resumes.items():
        shutil.rmtree(run / "checkpoints" / step_dir_name(STEPS))
        out = tmp_path / strategy
        out.mkdir()
        settings = {**pipeline, "distributed__strategy": strategy, **schedule}
        resumed = _overrides(shards_dir, tokenizer_dir, run, **settings)
        _torchrun([RECORD, str(out)], [*resumed, "--resume"], nproc=4, timeout=240)
        seen = [json.loads((out / f"samples_rank{r}.json").read_text()) for r in range(4)]
        # ranks 0, 1: pipeline rank 0 of data-parallel ranks 0, 1; ranks 2, 3: rank 1 of those
        assert seen[0] == seen[2] and seen[1] == seen[3]  # a pipeline's ranks read alike
        first = SAVED_AT * GLOBAL_BATCH
        assert sorted(seen[0] + seen[1]) == list(range(first, STEPS * GLOBAL_BATCH))
        held = [json.loads((out / f"stage_rank{r}.json").read_text()) for r in range(4)]
        assert [h["blocks"] for h in held] == blocks[strategy]
        assert held[0]["parts"] == ["embed", "rope"]  # and the tied embedding's copy at the end:
        assert held[2]["parts"] == ["embed", "rope", "norm"]
        if strategy == "fsdp":  # each rank of a stage holds half of its first weight
            assert [h["stages"] for h in held] == [[0, 2], [0, 2], [1, 3], [1, 3]]
            layout = [json.loads((out / f"layout_rank{r}.json").read_text()) for r in range(4)]
            assert all(2 * lay["local_rows"] == lay["rows"] for lay in layout)
            assert layout[0]["local_sum"] != layout[1]["local_sum"]
        _assert_same_run(run, reference)
        _assert_same_counts(run, reference)

    # One process resumes the pipeline's sharded step 5 as well: the same steps 6..10.
    shutil.rmtree(run / "checkpoints" / step_dir_name(STEPS))
    one = tmp_path / "one"
    shutil.copytree(run, one)
    args = _overrides(shards_dir, tokenizer_dir, one, **FOUR_BLOCKS)
    Trainer(load_config(ExperimentConfig, None, args), resume=True).fit()
    assert _losses(one)[SAVED_AT:] == pytest.approx(_losses(reference)[SAVED_AT:], rel=1e-6)
    final = load_file(str(one / "checkpoints" / step_dir_name(STEPS) / MODEL_FILE))
    want = load_file(str(reference / "checkpoints" / step_dir_name(STEPS) / MODEL_FILE))
    assert max(float((final[k] - want[k]).abs().max()) for k in want) < 1e-5


def test_two_stages_each_split_over_two_ranks_equal_one_process(
    reference, shards_dir, tokenizer_dir, tmp_path
):
    """Pipeline x tensor x sequence parallelism (FSDP over the one data-parallel rank): each
    stage's blocks split over a pair of ranks, the sequence split at the stage's first block
    and gathered after its last, the pairs passing the whole stream along, as torchtitan
    composes them; the gathered weights are the fused model's."""
    run = tmp_path / "run"
    settings = {
        **FOUR_BLOCKS,
        "distributed__strategy": "fsdp",
        "distributed__pipeline_parallel_degree": 2,
        "distributed__tensor_parallel_degree": 2,
        "distributed__sequence_parallel": "true",
    }
    args = _overrides(shards_dir, tokenizer_dir, run, **settings)
    _torchrun(["-m", "pretrain", "train"], args, nproc=4, timeout=240)
    _assert_same_run(run, reference)
    _assert_same_counts(run, reference)


def test_two_stages_a_rank_over_two_context_ranks_equal_one_process(
    reference, shards_dir, tokenizer_dir, tmp_path
):
    """Pipeline x context parallelism (4 ranks): each of a pipeline's ranks holds 2 of the 4
    stages (interleaved 1F1B) and a share of every sequence; FSDP shards each stage over its
    pair of context-parallel ranks, which gather keys and values in every block."""
    run = tmp_path / "run"
    settings = {
        **FOUR_BLOCKS,
        "distributed__strategy": "fsdp",
        "distributed__pipeline_parallel_degree": 2,
        "distributed__pipeline_schedule": "interleaved_1f1b",
        "distributed__pipeline_stages_per_rank": 2,
        "distributed__context_parallel_degree": 2,
    }
    args = _overrides(shards_dir, tokenizer_dir, run, **settings)
    _torchrun(["-m", "pretrain", "train"], args, nproc=4, timeout=240)
    _assert_same_run(run, reference)
    _assert_same_counts(run, reference)


def test_a_pipeline_refuses_a_checkpoint_without_shards(single_run):
    """Its optimizer state numbers the whole model's parameters, which no stage has: refused
    before anything is loaded, naming the way out (checked in one process: the refusal comes
    before any collective)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(TrainingError, match="written by one process or DDP") as refused:
        load_run_checkpoint(single_run / "checkpoints", model, model, optimizer, pipelined=True)
    assert "--model.init_from=DIR" in str(refused.value)
