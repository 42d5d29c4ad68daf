"""A pipeline's stages, run one after the other in one process, compute the whole decoder's
forward (causal within documents, prefix LM, learned positions); each stage keeps only its
blocks under their own names, and a step's micro-batches travel as one batch the schedule can
split again. (Two ranks training as one process: tests/distributed/test_pipeline_parallel.py.)"""

from __future__ import annotations

import pytest
import torch

from pretrain.distributed.pipeline_stages import (
    DecoderStage,
    rank_stages,
    split_decoder,
    stage_inputs,
    stage_layers,
)
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.model import DecoderLM
from pretrain.objectives.base import AttentionSpec, ModelBatch

VOCAB, B, T = 97, 2, 12


def test_stages_take_contiguous_runs_of_blocks_the_first_ones_longer():
    assert [list(stage_layers(7, 3, s)) for s in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(stage_layers(4, 4, s)) for s in range(4)] == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="need at least as many blocks; the model has"):
        stage_layers(2, 3, 0)
    # interleaved: 2 ranks holding 2 stages each, looped
    assert [rank_stages(r, 2, 2) for r in range(2)] == [[0, 2], [1, 3]]


def _ranks(
    style: str, tie: bool, num_ranks: int, stages_per_rank: int = 1
) -> tuple[DecoderLM, list[DecoderStage]]:
    """The whole model, and every stage in order, built by the rank holding it."""
    torch.manual_seed(0)
    cfg = decoder_config("debug", VOCAB, n_layers=5, style=style, tie_embeddings=tie,
                         d_model=32, max_seq_len=T)  # fmt: skip
    whole = DecoderLM(cfg).eval()
    num_stages = num_ranks * stages_per_rank
    stages: dict[int, DecoderStage] = {}
    for rank in range(num_ranks):
        part = DecoderLM(cfg).eval()
        part.load_state_dict(whole.state_dict())
        mine = rank_stages(rank, num_ranks, stages_per_rank)
        for s, layers in split_decoder(part, mine, num_stages).items():
            stages[s] = DecoderStage(part, layers, first=s == 0, last=s == num_stages - 1)
    return whole, [stages[s] for s in range(num_stages)]


def _through_stages(stages: list[DecoderStage], batch: ModelBatch) -> torch.Tensor:
    _, _, kwargs = stage_inputs([batch])
    x = batch.input_ids
    for stage in stages:
        x = stage(x, **kwargs)
    return x


@pytest.mark.parametrize(
    ("style", "tie", "stages_per_rank"),
    [("llama", True, 1), ("llama", False, 1), ("gpt2", True, 1), ("llama", True, 2)],
)
def test_stages_one_after_the_other_compute_the_whole_forward(style, tie, stages_per_rank):
    whole, stages = _ranks(style, tie, num_ranks=2 if stages_per_rank > 1 else 3,
                           stages_per_rank=stages_per_rank)  # fmt: skip
    ids = torch.randint(VOCAB, (B, T))
    documents = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    specs = [
        AttentionSpec("causal", document_ids=documents),
        AttentionSpec("prefix", prefix_lengths=torch.tensor([4, 0])),
    ]
    for spec in specs:
        batch = ModelBatch(ids, ids, spec)
        torch.testing.assert_close(_through_stages(stages, batch), whole(batch), rtol=0, atol=0)


def test_each_stage_holds_its_blocks_under_their_names_and_the_ends_theirs():
    _, stages = _ranks("gpt2", True, num_ranks=3)
    held = [sorted(stage.model.state_dict()) for stage in stages]
    blocks = [sorted({k.split(".")[1] for k in keys if k.startswith("blocks.")}) for keys in held]
    assert blocks == [["0", "1"], ["2", "3"], ["4"]]
    assert [k for k in held[0] if not k.startswith("blocks.")] == [
        "embed.weight",
        "pos_embed.weight",
    ]
    assert all(k.startswith("blocks.") for k in held[1])
    # the last: the final norm and the tied embedding's copy for the output projection
    assert [k for k in held[2] if not k.startswith("blocks.")] == [
        "embed.weight",
        "norm.bias",
        "norm.weight",
    ]
    # a stage's parameters are its own: DDP and FSDP wrap each stage
    assert {n.split(".")[0] for n, _ in stages[2].named_parameters()} == {
        "blocks", "norm", "output"
    }  # fmt: skip
    assert stages[2].output is stages[2].model.embed  # the tied copy projects the output
    _, untied = _ranks("llama", False, num_ranks=2)
    assert "embed.weight" not in untied[1].model.state_dict()
    assert "lm_head.weight" in untied[1].model.state_dict()
    _, interleaved = _ranks("llama", True, num_ranks=2, stages_per_rank=2)
    # rank 0 holds stages 0 and 2 (blocks 0-1 and 3), rank 1 stages 1 and 3 (2 and 4)
    qkv = [[n for n, _ in s.named_parameters() if n.endswith("qkv.weight")] for s in interleaved]
    assert [len(b) for b in qkv] == [2, 1, 1, 1]
    rank0 = {k.split(".")[1] for k in interleaved[0].model.state_dict() if k.startswith("blocks.")}
    assert rank0 == {"0", "1", "3"}


def test_a_step_travels_as_one_batch_causal_micro_batches_beside_prefix_ones_with_prefix_0():
    ids = torch.randint(VOCAB, (B, T))
    prefix = ModelBatch(ids, ids, AttentionSpec("prefix", prefix_lengths=torch.tensor([3, 5])))
    causal = ModelBatch(ids + 1, ids, AttentionSpec())
    input_ids, index, kwargs = stage_inputs([prefix, causal])
    assert torch.equal(input_ids, torch.cat([ids, ids + 1]))
    assert index.tolist() == [0, 0, 1, 1]  # the loss finds each micro-batch's labels by it
    assert kwargs.keys() == {"prefix_lengths"}
    assert kwargs["prefix_lengths"].tolist() == [3, 5, 0, 0]  # prefix 0: causal
    documents = ModelBatch(ids, ids, AttentionSpec(document_ids=torch.zeros(B, T)))
    with pytest.raises(ValueError, match="document_ids in some micro-batches of a step only"):
        stage_inputs([documents, causal])
    with pytest.raises(ValueError, match="causal and prefix-LM attention, not"):
        stage_inputs([ModelBatch(ids, ids, AttentionSpec("bidirectional"))])


def test_positions_shared_by_a_micro_batchs_rows_travel_one_a_row():
    """A context-parallel shard's positions are one row ``(1, T)`` for the micro-batch; the
    schedule splits the step's rows, so each row gets its copy."""
    ids = torch.randint(VOCAB, (B, T))
    shared = torch.arange(5, 5 + T)[None]  # (1, T)
    batches = [ModelBatch(ids, ids, AttentionSpec(), position_ids=shared) for _ in range(3)]
    _, _, kwargs = stage_inputs(batches)
    assert kwargs["position_ids"].shape == (3 * B, T)
    assert torch.equal(kwargs["position_ids"], shared.expand(3 * B, T))
