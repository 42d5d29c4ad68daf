"""XLNet's FlexAttention path computes what the dense SDPA path computes.

The forward runs on CPU (unfused). The kernel's backward needs CUDA and is checked in
``tests/gpu/test_cuda.py``; here the gradients are checked through PyTorch's eager
FlexAttention with its CPU device check lifted (``flex_backward_on_cpu``).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.models.xlnet import XLNetConfig, XLNetLM
from pretrain.objectives.plm import PermutationLM
from tests.helpers import assert_close_to_scale, projected_sum

VOCAB, T = 200, 48


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def twins(position_encoding: str, layout: str = "factorization") -> tuple[XLNetLM, XLNetLM]:
    torch.manual_seed(0)
    cfg = XLNetConfig(
        VOCAB, d_model=64, n_layers=2, n_heads=4, init_std=0.1, position_encoding=position_encoding
    )
    dense = XLNetLM(dataclasses.replace(cfg, attention_backend="sdpa")).eval()
    flex_cfg = dataclasses.replace(cfg, attention_backend="flex", flex_layout=layout)
    flex = XLNetLM(flex_cfg).eval()
    flex.load_state_dict(dense.state_dict())
    return dense, flex


def plm_batch(rule: str, seed: int = 0, B: int = 3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, VOCAB, (B, T + 1), generator=g)
    tokens[:, ::11] = 0  # special tokens keep their rank
    zeros = torch.zeros_like(tokens)
    tb = TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))
    return PermutationLM([0, 1], mask_id=2, rule=rule)(tb, g)


def streams(model, batch, token_types=None):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        return model.streams(batch.input_ids, batch.attention, batch.target_mapping, token_types)


@pytest.mark.parametrize("layout", ["factorization", "input"])
@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
@pytest.mark.parametrize("rule", ["xlnet", "hf"])
@pytest.mark.parametrize("segments", [False, True])
def test_flex_streams_match_the_dense_path(position_encoding, rule, segments, layout):
    dense, flex = twins(position_encoding, layout)
    batch = plm_batch(rule)
    assert flex.uses_flex(batch.attention) and not dense.uses_flex(batch.attention)
    types = None
    if segments:
        types = (torch.arange(T) >= T // 3).long().expand(3, T).clone()
        types[1] = 0
    h_dense, g_dense = streams(dense, batch, types)
    h_flex, g_flex = streams(flex, batch, types)
    torch.testing.assert_close(h_flex, h_dense, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(g_flex, g_dense, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
def test_flex_bidirectional_and_dense_fallback(position_encoding):
    dense, flex = twins(position_encoding)
    batch = plm_batch("xlnet", seed=1)
    with torch.no_grad():
        want = dense.streams(batch.input_ids)[0]
    got = streams(flex, dataclasses.replace(batch, attention=None, target_mapping=None))[0]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # a dense perm_mask (as HF takes it) has no ranks: the flex model falls back to SDPA
    perm = ~batch.attention.permutation_allowed()
    spec = dataclasses.replace(batch.attention, permutation_mask=perm, query_rank=None)
    assert not flex.uses_flex(spec)
    fallback = streams(flex, dataclasses.replace(batch, attention=spec))[1]
    torch.testing.assert_close(fallback, streams(dense, batch)[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
def test_factorization_layout_without_target_mapping(position_encoding):
    """One query row per position (no ``target_mapping``): the query rows stay in input order
    while the keys are in the layout."""
    dense, flex = twins(position_encoding)
    batch = dataclasses.replace(plm_batch("xlnet", seed=2), target_mapping=None)
    for got, want in zip(streams(flex, batch), streams(dense, batch), strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_factorization_layout_makes_most_blocks_full_or_empty():
    """In input order every 128 x 128 block of a random permutation's mask is partial; laid
    out by rank, the context's blocks are full and those past the queries' ranks are empty."""
    from pretrain.models.xlnet.flex import factorization_layout, stream_rules

    B, T = 2, 512
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, VOCAB, (B, T + 1), generator=g)
    tb = TokenBatch(tokens, torch.zeros_like(tokens), torch.zeros(B, dtype=torch.long),
                    torch.arange(B))  # fmt: skip
    batch = PermutationLM([0, 1], mask_id=2)(tb, g)
    spec, tm = batch.attention, batch.target_mapping
    query_pos, valid = tm.argmax(-1), tm.sum(-1) > 0
    blocks = (T // 128) ** 2
    counts = {}
    for name, layout in (("input", None), ("factorization", factorization_layout(spec.key_rank))):
        content, query = stream_rules(
            B, T, "cpu", spec.query_rank, spec.key_rank, query_pos, valid, None, layout
        )
        mask = content.block_mask
        partial = int(mask.kv_num_blocks.sum())
        full = int(mask.full_kv_num_blocks.sum())
        counts[name] = (partial, full, B * blocks - partial - full)  # partial, full, empty
    assert counts["input"] == (B * blocks, 0, 0)
    partial, full, _ = counts["factorization"]
    assert full >= B * blocks // 2 and partial <= B * blocks // 2


@pytest.mark.parametrize("layout", ["factorization", "input"])
@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
def test_flex_gradients_match_the_dense_path(flex_backward_on_cpu, position_encoding, layout):
    """Through PyTorch's eager FlexAttention, differentiated on the CPU
    (``flex_backward_on_cpu``), the flex path's gradients equal the dense path's: the layout's
    gather and scatter, the mask over ranks, and the position table captured by the
    ``score_mod``."""
    dense, flex = twins(position_encoding, layout)
    batch = plm_batch("xlnet", seed=3)
    types = (torch.arange(T) >= T // 2).long().expand(3, T).clone()
    grads = []
    for model in (dense, flex):
        model.zero_grad()
        h, g = model.streams(batch.input_ids, batch.attention, batch.target_mapping, types)
        (projected_sum(h, seed=1) + projected_sum(g, seed=2)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "blocks.0.attn.segment_embed" in grads[1]  # the segment table's gradient too
    if position_encoding == "txl":
        assert "blocks.0.attn.position_bias" in grads[1]  # through the captured table
    for name, want in grads[0].items():
        assert_close_to_scale(grads[1][name], want, 1e-4, name)


def test_auto_backend_is_flex_on_cuda_only():
    """XLNet's default backend, ``auto``: the dense path on the CPU (where FlexAttention has
    no backward, so training works there), FlexAttention on CUDA."""
    from pretrain.models.common import flex as common_flex

    model = XLNetLM(XLNetConfig(VOCAB, d_model=64, n_layers=1, n_heads=4))
    assert model.cfg.attention_backend == "auto"
    assert not model.uses_flex(plm_batch("xlnet").attention)
    assert common_flex.enabled("auto", torch.device("cuda"))
    assert not common_flex.enabled("auto", torch.device("cpu"))
    assert common_flex.enabled("flex", torch.device("cpu"))  # explicit: forward-only on CPU
    assert not common_flex.enabled("sdpa", torch.device("cuda"))


@pytest.mark.parametrize("layout", ["factorization", "input"])
def test_the_model_lays_out_rows_as_configured(monkeypatch, layout):
    """The outputs are the same either way, so the equality tests cannot see whether the
    model applies ``flex_layout``: this checks what it hands the rules."""
    from pretrain.models.xlnet import flex as xlnet_flex
    from pretrain.models.xlnet import model as xlnet_model

    seen = []

    def spy(*args):
        seen.append(args[-1])  # the layout
        return xlnet_flex.stream_rules(*args)

    monkeypatch.setattr(xlnet_model, "stream_rules", spy)
    _, flex = twins("rope", layout)
    batch = plm_batch("xlnet")
    streams(flex, batch)
    (got,) = seen
    if layout == "input":
        assert got is None
    else:
        ranks = batch.attention.key_rank.gather(1, got)
        assert torch.equal(ranks, batch.attention.key_rank.sort(dim=1).values)
