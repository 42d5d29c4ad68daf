"""A pipeline's stages, run one after the other in one process, compute the whole decoder's
forward (causal within documents, prefix LM, learned positions); each stage keeps only its
blocks under their own names, and a step's micro-batches travel as one batch the schedule can
split again. (Two ranks training as one process: tests/distributed/test_pipeline_parallel.py.)"""

from __future__ import annotations

import pytest
import torch

from pretrain.distributed.pipeline_parallel import (
    DecoderStage,
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
    with pytest.raises(ValueError, match="at least as many blocks as stages; the model has"):
        stage_layers(2, 3, 0)


def _stages(style: str, tie: bool, num_stages: int) -> tuple[DecoderLM, list[DecoderLM]]:
    torch.manual_seed(0)
    cfg = decoder_config("debug", VOCAB, n_layers=5, style=style, tie_embeddings=tie,
                         d_model=32, max_seq_len=T)  # fmt: skip
    whole = DecoderLM(cfg).eval()
    parts = []
    for stage in range(num_stages):
        part = DecoderLM(cfg).eval()
        part.load_state_dict(whole.state_dict())
        split_decoder(part, stage, num_stages)
        parts.append(part)
    return whole, parts


def _through_stages(parts: list[DecoderLM], batch: ModelBatch) -> torch.Tensor:
    _, _, kwargs = stage_inputs([batch])
    x = batch.input_ids
    for i, part in enumerate(parts):
        x = DecoderStage(part, first=i == 0, last=i == len(parts) - 1)(x, **kwargs)
    return x


@pytest.mark.parametrize(("style", "tie"), [("llama", True), ("llama", False), ("gpt2", True)])
def test_stages_one_after_the_other_compute_the_whole_forward(style, tie):
    whole, parts = _stages(style, tie, num_stages=3)
    ids = torch.randint(VOCAB, (B, T))
    documents = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    specs = [
        AttentionSpec("causal", document_ids=documents),
        AttentionSpec("prefix", prefix_lengths=torch.tensor([4, 0])),
    ]
    for spec in specs:
        batch = ModelBatch(ids, ids, spec)
        torch.testing.assert_close(_through_stages(parts, batch), whole(batch), rtol=0, atol=0)


def test_each_stage_holds_its_blocks_under_their_names_and_the_ends_theirs():
    _, parts = _stages("gpt2", True, num_stages=3)
    held = [sorted(part.state_dict()) for part in parts]
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
    _, untied = _stages("llama", False, num_stages=2)
    assert "embed.weight" not in untied[1].state_dict()
    assert "lm_head.weight" in untied[1].state_dict()


def test_a_step_travels_as_one_batch_causal_micro_batches_beside_prefix_ones_with_prefix_0():
    ids = torch.randint(VOCAB, (B, T))
    prefix = ModelBatch(ids, ids, AttentionSpec("prefix", prefix_lengths=torch.tensor([3, 5])))
    causal = ModelBatch(ids + 1, ids, AttentionSpec())
    input_ids, labels, kwargs = stage_inputs([prefix, causal])
    assert torch.equal(input_ids, torch.cat([ids, ids + 1])) and labels.shape == (2 * B, T)
    assert kwargs.keys() == {"prefix_lengths"}
    assert kwargs["prefix_lengths"].tolist() == [3, 5, 0, 0]  # prefix 0: causal
    documents = ModelBatch(ids, ids, AttentionSpec(document_ids=torch.zeros(B, T)))
    with pytest.raises(ValueError, match="document_ids in some micro-batches of a step only"):
        stage_inputs([documents, causal])
    with pytest.raises(ValueError, match="causal and prefix-LM attention, not"):
        stage_inputs([ModelBatch(ids, ids, AttentionSpec("bidirectional"))])
