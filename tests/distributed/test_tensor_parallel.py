"""Tensor parallelism on CPU with gloo: 2 ranks splitting every block compute what one process
computes; saved there, the run resumes on 4 ranks (2 data-parallel x 2 tensor-parallel, FSDP
over the data-parallel pair) at exactly the next sample, each tensor-parallel pair reading the
same batches; its checkpoint is refused without tensor parallelism, with the way out."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from pretrain.config import ExperimentConfig, load_config
from pretrain.train.checkpoint import SHARDED_DIR, STATE_FILE, step_dir_name
from pretrain.train.errors import TrainingError
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.distributed.test_data_parallel import (
    MUON,
    MUON_PARAM_ATOL,
    REPO,
    STEPS,
    _assert_same_run,
    _one_process_and_two_ranks,
    _overrides,
    _torchrun,
)

pytestmark = pytest.mark.distributed

RECORD = str(REPO / "tests" / "distributed" / "record_samples.py")
COUNT = str(REPO / "tests" / "distributed" / "count_tp_collectives.py")
SAVED_AT = 5  # checkpoint.every_steps of _overrides
GLOBAL_BATCH = 8  # windows a step


def test_two_tensor_parallel_ranks_equal_one_process_and_resume_on_four(
    single_run,
    shards_dir,
    tokenizer_dir,
    tmp_path,
):
    run = tmp_path / "run"
    tp = {
        "distributed__strategy": "fsdp",
        "distributed__tensor_parallel_degree": 2,
        "distributed__sequence_parallel": "true",  # the norms' weights: gradients summed
    }
    args = _overrides(shards_dir, tokenizer_dir, run, **tp)
    _torchrun(["-m", "pretrain", "train"], args)
    # Both ranks computed every micro-batch together: what one process computes, and the
    # consolidated weights are the fused model's (the same keys as one process's).
    _assert_same_run(run, single_run)
    _assert_same_counts(run, single_run)
    saved = json.loads((run / "checkpoints" / step_dir_name(SAVED_AT) / STATE_FILE).read_text())
    assert saved["tensor_parallel_degree"] == 2

    # Resumed from step 5 on 4 ranks: FSDP over 2 data-parallel ranks, each a pair splitting
    # the blocks (DCP reshards the checkpoint onto the new mesh).
    shutil.rmtree(run / "checkpoints" / step_dir_name(STEPS))
    out = tmp_path / "samples"
    out.mkdir()
    _torchrun([RECORD, str(out)], [*args, "--resume"], nproc=4, timeout=240)
    seen = [json.loads((out / f"samples_rank{r}.json").read_text()) for r in range(4)]
    assert seen[0] == seen[1] and seen[2] == seen[3]  # a pair reads the same batches
    first = SAVED_AT * GLOBAL_BATCH
    assert sorted(seen[0] + seen[2]) == list(range(first, STEPS * GLOBAL_BATCH))
    _assert_same_run(run, single_run)
    _assert_same_counts(run, single_run)
    layout = [json.loads((out / f"tp_layout_rank{r}.json").read_text()) for r in range(4)]
    assert all(lay["mesh_shape"] == [2, 2] for lay in layout)
    assert all(4 * lay["local_rows"] == lay["rows"] for lay in layout)  # a quarter each
    assert len({lay["local_sum"] for lay in layout}) == 4  # four different quarters
    sharded = run / "checkpoints" / step_dir_name(STEPS) / SHARDED_DIR
    assert {f"__{r}_0.distcp" for r in range(4)} <= {p.name for p in sharded.iterdir()}

    # One process cannot take the split parameters: refused, naming both degrees.
    one = _overrides(shards_dir, tokenizer_dir, run)
    with pytest.raises(TrainingError, match="tensor_parallel_degree=2, this run has 1"):
        Trainer(load_config(ExperimentConfig, None, one), resume=True)


def test_a_split_block_communicates_as_megatron_does_and_computes_what_the_whole_one_does(
    tmp_path,
):
    """Megatron's count (Shoeybi et al. 2019, §3): per block, one all-reduce after the
    attention and one after the MLP in the forward, one for each of their input gradients in
    the backward; q, k and v (and gate, up), split apart, share theirs. With sequence
    parallelism (Korthikanti et al. 2022, §4.2.2) each all-reduce becomes an all-gather before
    and a reduce-scatter after, plus the gather of the sequence after the last block and of
    its gradient at the first."""
    _torchrun([COUNT, str(tmp_path), "llama"], [])
    for sequence_parallel, rank in itertools.product((False, True), (0, 1)):
        name = f"collectives_{int(sequence_parallel)}_rank{rank}.json"
        facts = json.loads((tmp_path / name).read_text())
        layers = facts["n_layers"]
        if sequence_parallel:
            want = {"all_gather_into_tensor": 4 * layers + 2, "reduce_scatter_tensor": 4 * layers}
        else:
            want = {"all_reduce": 4 * layers}
        assert facts["collectives"] == want
        assert facts["hidden_abs"] < 1e-5
        assert facts["grad_rel"] < 1e-4
        assert facts["greedy_tokens_equal"] is (None if sequence_parallel else True)


def test_a_bert_split_over_two_ranks_trains_with_muon_as_one_process(
    shards_dir, tokenizer_dir, tmp_path
):
    """The encoder's biases (split with the query, key and value rows, added once after the
    output projection's all-reduce), its erf-GELU MLP and MLM's random masks, the same on a
    pair's two ranks; Muon gathers each split matrix (q, k, v apart: what one process's
    block-by-block Muon orthogonalizes) for its update."""
    mlm = {"model__family": "encoder", "objective__name": "mlm", **MUON}
    single, split = _one_process_and_two_ranks(
        shards_dir, tokenizer_dir, tmp_path, "fsdp", ("--distributed.tensor_parallel_degree=2",),
        **mlm,
    )  # fmt: skip
    _assert_same_run(split, single, param_atol=MUON_PARAM_ATOL)
    _assert_same_counts(split, single)


def _assert_same_counts(run, reference) -> None:
    """The tokens trained on and the validation results are one process's: a pair's second
    rank, which saw the same batches, is not counted twice."""

    def counted(path):
        records = read_metrics(path)
        train = [r["tokens"] for r in records if r["split"] == "train"]
        val = [
            (r["step"], r["tokens_evaluated"], r["loss"]) for r in records if r["split"] == "val"
        ]
        return train, val

    (train, val), (want_train, want_val) = counted(run), counted(reference)
    assert train == want_train
    assert [v[:2] for v in val] == [v[:2] for v in want_val]
    assert [v[2] for v in val] == pytest.approx([v[2] for v in want_val], rel=1e-6)
    # Clipping acted (optim.grad_clip 1.0), so equal weights also say that the gradient norm
    # over the two meshes (blocks split, the rest whole) scaled every gradient alike.
    norms = [r["grad_norm"] for r in read_metrics(run) if r["split"] == "train"]
    assert max(norms) > 1.0
