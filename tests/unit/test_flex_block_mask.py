"""The broadcast block-mask builder gives exactly the ``BlockMask`` of ``create_block_mask``."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from pretrain.models.common import flex
from pretrain.models.common.flex_block_mask import build_block_mask
from pretrain.models.xlnet.flex import factorization_layout, stream_rules
from pretrain.objectives.base import AttentionSpec

TENSORS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def assert_same_block_mask(got, expected) -> None:
    assert got.seq_lengths == expected.seq_lengths
    assert tuple(got.BLOCK_SIZE) == tuple(expected.BLOCK_SIZE)
    for name in TENSORS:
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.is_contiguous(), name
        # Past a row's count, the column lists are padding the kernels never read; both
        # builders sort the same way, so compare them whole.
        assert torch.equal(a, b), name


def _documents(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.rand(B, T, generator=gen) < 0.02
    return starts.long().cumsum(dim=1)


@pytest.mark.parametrize("T", [64, 128, 200, 512])
@pytest.mark.parametrize("rule", ["causal", "bidirectional", "prefix", "keys"])
def test_document_and_prefix_rules_match_create_block_mask(T: int, rule: str):
    gen = torch.Generator().manual_seed(T)
    B = 3
    docs = _documents(B, T, gen)
    prefix = torch.randint(0, T, (B,), generator=gen)
    keys = torch.rand(B, T, generator=gen) > 0.3
    kind = "prefix" if rule == "prefix" else ("bidirectional" if rule != "causal" else "causal")
    spec = AttentionSpec(
        kind, document_ids=docs, prefix_lengths=prefix if kind == "prefix" else None
    )
    got = flex.block_mask(spec, T, keys=keys if rule == "keys" else None)

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = {"causal": kv_idx <= q_idx, "prefix": (kv_idx <= q_idx) | (kv_idx < prefix[b])}
        out = allowed.get(kind, q_idx >= 0) & (docs[b, q_idx] == docs[b, kv_idx])
        return out & keys[b, kv_idx] if rule == "keys" else out

    assert_same_block_mask(got, create_block_mask(mask_mod, B, None, T, T, device="cpu"))


@pytest.mark.parametrize("q_len, kv_len", [(114, 512), (1, 300), (130, 129)])
def test_key_padding_with_other_query_lengths(q_len: int, kv_len: int):
    keys = torch.rand(2, kv_len, generator=torch.Generator().manual_seed(q_len)) > 0.5
    keys[:, : kv_len // 2] = True  # a row of blocks full for every query

    def mask_mod(b, h, q_idx, kv_idx):
        return keys[b, kv_idx]

    expected = create_block_mask(mask_mod, 2, None, q_len, kv_len, device="cpu")
    assert_same_block_mask(flex.key_mask(keys, q_len), expected)


def test_a_rule_without_batch_gives_one_mask_row():
    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    got = build_block_mask(causal, None, 300, 300, "cpu")
    assert_same_block_mask(got, create_block_mask(causal, None, None, 300, 300, device="cpu"))


def test_one_hidden_pair_makes_its_block_partial():
    def all_but_one(b, h, q_idx, kv_idx):
        return ~((q_idx == 5) & (kv_idx == 130))

    got = build_block_mask(all_but_one, None, 256, 256, "cpu")
    assert_same_block_mask(got, create_block_mask(all_but_one, None, None, 256, 256, "cpu"))
    assert got.kv_num_blocks.tolist() == [[[1, 0]]]  # query block 0: key block 1 is partial


def check_xlnet_stream_rules(layout: bool, device: torch.device) -> None:
    """Both streams of a random factorization order with 85 target rows, one a padding row,
    built on ``device``, against ``create_block_mask`` there (the GPU tests call this too)."""
    gen = torch.Generator().manual_seed(7)
    B, T, M = 2, 512, 85
    key_rank = torch.stack([torch.randperm(T, generator=gen) for _ in range(B)]) - 300
    key_rank = key_rank.clamp(min=-1).to(device)  # context tokens share rank -1
    query_rank = key_rank.clone()
    query_pos = torch.stack([torch.randperm(T, generator=gen)[:M] for _ in range(B)]).to(device)
    valid = torch.ones(B, M, dtype=torch.bool, device=device)
    valid[1, -1] = False
    order = factorization_layout(key_rank) if layout else None
    content, query = stream_rules(B, T, device, query_rank, key_rank, query_pos, valid, None, order)
    q_rank, k_rank = query_rank, key_rank
    if order is not None:
        q_rank, k_rank = query_rank.gather(1, order), key_rank.gather(1, order)
    row_rank = query_rank.gather(1, query_pos)

    def content_mod(b, h, q_idx, kv_idx):
        return (q_idx == kv_idx) | (q_rank[b, q_idx] > k_rank[b, kv_idx])

    def query_mod(b, h, q_idx, kv_idx):
        return ~valid[b, q_idx] | (row_rank[b, q_idx] > k_rank[b, kv_idx])

    expected = create_block_mask(content_mod, B, None, T, T, device)
    assert_same_block_mask(content.block_mask, expected)
    assert_same_block_mask(query.block_mask, create_block_mask(query_mod, B, None, M, T, device))
    if layout:  # the layout leaves few partial blocks, so full blocks are exercised too
        assert int(content.block_mask.full_kv_num_blocks.sum()) > 0


@pytest.mark.parametrize("layout", [False, True])
def test_xlnet_stream_rules_match_create_block_mask(layout: bool):
    check_xlnet_stream_rules(layout, torch.device("cpu"))


@pytest.mark.usefixtures("fresh_dynamo")
def test_the_builder_traces_into_one_graph():
    """A whole model compiled as one graph (``train.compile_scope=model``) builds its masks
    inside the graph: the builder must trace without a graph break and give the same mask."""
    gen = torch.Generator().manual_seed(3)
    docs = _documents(2, 256, gen)
    keys = torch.rand(2, 256, generator=gen) > 0.2

    def build(docs, keys):
        return flex.block_mask(AttentionSpec("bidirectional", document_ids=docs), 256, keys=keys)

    compiled = torch.compile(build, backend="aot_eager", fullgraph=True)
    assert_same_block_mask(compiled(docs, keys), build(docs, keys))
