"""XLNet's FlexAttention path computes what the dense SDPA path computes.

The forward runs on CPU (unfused); the backward needs CUDA and is checked in
``tests/gpu/test_cuda.py``.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.models.xlnet import XLNetConfig, XLNetLM
from pretrain.objectives.plm import PermutationLM

VOCAB, T = 200, 48


def twins(position_encoding: str) -> tuple[XLNetLM, XLNetLM]:
    torch.manual_seed(0)
    cfg = XLNetConfig(
        VOCAB, d_model=64, n_layers=2, n_heads=4, init_std=0.1, position_encoding=position_encoding
    )
    dense = XLNetLM(cfg).eval()
    flex = XLNetLM(dataclasses.replace(cfg, attention_backend="flex")).eval()
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


@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
@pytest.mark.parametrize("rule", ["xlnet", "hf"])
@pytest.mark.parametrize("segments", [False, True])
def test_flex_streams_match_the_dense_path(position_encoding, rule, segments):
    dense, flex = twins(position_encoding)
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
