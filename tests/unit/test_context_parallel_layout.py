"""Context parallelism without processes: which positions a rank holds, the batch it trains on,
the rows and columns of the mask it attends with, and where it sits among the ranks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.distributed.context_parallel import gathered_positions, shard_batch, shard_positions
from pretrain.distributed.env import DistEnv
from pretrain.models.common.attention import attention_mask
from pretrain.objectives.base import AttentionSpec, ModelBatch


@pytest.mark.parametrize("size", [1, 2, 4])
def test_the_ranks_hold_the_whole_sequence_once_with_equal_causal_work(size):
    T = 32
    held = [shard_positions(T, r, size) for r in range(size)]
    assert sorted(torch.cat(held).tolist()) == list(range(T))
    assert torch.equal(gathered_positions(T, size), torch.cat(held))
    # query i sees i + 1 keys: an early and a late chunk make the same sum on every rank
    assert len({int((p + 1).sum()) for p in held}) == 1
    chunk = T // (2 * size)
    assert held[-1][:chunk].tolist() == list(range((size - 1) * chunk, size * chunk))


def test_a_length_that_does_not_cut_into_equal_chunks_is_refused():
    with pytest.raises(ValueError, match="the sequence length 30 is not a multiple of 4"):
        shard_positions(30, 0, 2)


def _whole_mask(spec: AttentionSpec, T: int) -> torch.Tensor:
    mask = attention_mask(spec, T)
    full = torch.ones(1, 1, T, T, dtype=torch.bool)
    if mask is None:
        return full.tril() if spec.kind == "causal" else full
    return mask


SPECS = {
    "causal": AttentionSpec("causal"),
    "causal-documents": AttentionSpec("causal", document_ids=torch.tensor([[0] * 5 + [1] * 11])),
    "bidirectional": AttentionSpec("bidirectional"),
    "bidirectional-documents": AttentionSpec(
        "bidirectional", document_ids=torch.tensor([[0] * 9 + [1] * 7])
    ),
    "prefix": AttentionSpec("prefix", prefix_lengths=torch.tensor([6])),
}


@pytest.mark.parametrize("name", SPECS)
def test_a_shard_attends_with_its_rows_of_the_whole_mask_over_the_gathered_keys(name):
    T, size = 16, 2
    spec = SPECS[name]
    whole = _whole_mask(spec, T)
    keys = gathered_positions(T, size)
    for rank in range(size):
        shard = shard_batch(ModelBatch(torch.zeros(1, T), torch.zeros(1, T), spec), rank, size)
        got = attention_mask(shard.attention, T // size)
        assert got is not None  # its width says the keys are gathered
        rows = shard_positions(T, rank, size)
        assert torch.equal(got.expand(1, 1, T // size, T), whole[:, :, rows][..., keys])


def test_a_shard_keeps_its_tokens_labels_and_positions():
    ids = torch.arange(32).view(2, 16)
    batch = ModelBatch(ids, ids + 100, AttentionSpec("causal"))
    shard = shard_batch(batch, 1, 2)  # chunks 1 and 2 of 4
    assert shard.input_ids[0].tolist() == list(range(4, 12))
    assert shard.labels[1].tolist() == list(range(120, 128))
    assert shard.position_ids.tolist() == [list(range(4, 12))]
    restart = torch.tensor([[0, 1, 2] + list(range(13))] * 2)  # a document starts at 3
    explicit = shard_batch(ModelBatch(ids, ids, AttentionSpec(), position_ids=restart), 1, 2)
    assert explicit.position_ids[0].tolist() == list(range(1, 9))


def test_an_encoder_decoder_batch_is_refused():
    ids = torch.zeros(1, 8, dtype=torch.long)
    batch = ModelBatch(ids, ids, AttentionSpec("bidirectional"), decoder_input_ids=ids)
    with pytest.raises(ValueError, match="an encoder-decoder or XLNet batch is not supported"):
        shard_batch(batch, 0, 2)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_reads_the_same_rule_at_the_shard_positions():
    """The block mask of a shard (its queries over the gathered keys) attends as the dense
    mask does: 128 queries of 256 keys, documents crossing the chunks."""
    from pretrain.models.common import flex

    T, size = 256, 2
    docs = torch.zeros(2, T, dtype=torch.long)
    docs[0, 50:] = 1
    docs[0, 190:] = 2
    spec = AttentionSpec("causal", document_ids=docs)
    draw = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, T // size, 8, generator=draw)
    k, v = torch.randn(2, 2, T, 8, generator=draw), torch.randn(2, 2, T, 8, generator=draw)
    for rank in range(size):
        batch = ModelBatch(torch.zeros(2, T), torch.zeros(2, T), spec)
        sharded = shard_batch(batch, rank, size).attention
        got = flex.attend(q, k, v, block_mask=flex.block_mask(sharded, T // size))
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(sharded, 0))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ranks_are_laid_out_data_context_tensor():
    # 8 ranks: 2 data-parallel x 2 context-parallel x 2 tensor-parallel, the last innermost
    layout = [
        DistEnv(rank=r, world_size=8, strategy="fsdp", tp_size=2, cp_size=2) for r in range(8)
    ]
    assert [d.dp_rank for d in layout] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.cp_rank for d in layout] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [d.dp_cp_rank for d in layout] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {(d.dp_size, d.dp_cp_size) for d in layout} == {(2, 4)}
    # each context rank counts its positions; a tensor-parallel pair counts once
    assert [d.counts_data for d in layout] == [True, False] * 4
    assert layout[0].dp_representatives() == [0, 4]
