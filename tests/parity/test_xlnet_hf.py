"""XLNetLM against Hugging Face XLNetLMHeadModel (DESIGN.md §7): same perm_mask and
target_mapping, logits within 1e-5 in fp32, the same loss."""

from __future__ import annotations

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.losses import cross_entropy_sum
from pretrain.models.xlnet import XLNetConfig, XLNetLM
from pretrain.models.xlnet.hf import from_hf, hf_config, to_hf
from pretrain.objectives.base import IGNORE_INDEX, AttentionSpec
from pretrain.objectives.plm import PermutationLM
from tests.helpers import perturb_norms_and_biases

transformers = pytest.importorskip("transformers")

VOCAB, T = 300, 48


def make_model(seed: int = 0, **overrides) -> XLNetLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, init_std=0.1)
    model = XLNetLM(XLNetConfig(**{**kw, **overrides}))
    return perturb_norms_and_biases(model).eval()


@pytest.fixture(scope="module")
def model() -> XLNetLM:
    return make_model()


@pytest.fixture(scope="module")
def hf(model: XLNetLM):
    return to_hf(model)


def plm_batch(seed: int, rule: str = "xlnet", B: int = 3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (B, T + 1), generator=g)
    tokens[:, 20] = 0  # a special token inside the window
    zeros = torch.zeros_like(tokens)
    tb = TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))
    return PermutationLM([0, 1], mask_id=2, rule=rule)(tb, g)


def hf_out(hf, batch, labels=None):
    with torch.no_grad():
        return hf(
            batch.input_ids,
            perm_mask=(~batch.attention.permutation_allowed()).float(),
            target_mapping=batch.target_mapping,
            labels=labels,
        )


@pytest.mark.parametrize("rule", ["xlnet", "hf"])
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_hf(model, hf, rule, seed):
    assert type(hf).__name__ == "XLNetLMHeadModel"
    batch = plm_batch(seed, rule)
    with torch.no_grad():
        _, g = model.streams(batch.input_ids, batch.attention, batch.target_mapping)
        ours = model.logits(g)
    theirs = hf_out(hf, batch).logits  # (B, M, V)
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-5, diff


def test_loss_matches_hf_on_the_same_batch(model, hf):
    batch = plm_batch(3)
    tm = batch.target_mapping
    # HF labels are per target_mapping row; padding rows (none here) would be -100
    hf_labels = torch.einsum("bmt,bt->bm", tm, batch.labels.float()).long()
    hf_labels[tm.sum(-1) == 0] = IGNORE_INDEX
    with torch.no_grad():
        total, count, _ = cross_entropy_sum(
            model(batch), batch.labels, model.output_weight, output_bias=model.output_bias
        )
    assert count == batch.num_label_tokens
    theirs = hf_out(hf, batch, hf_labels).loss
    assert abs(total.item() / count - theirs.item()) < 1e-5


def test_identity_mapping_and_padding_rows_match_hf(model, hf):
    batch = plm_batch(4)
    B = batch.input_ids.shape[0]
    eye = torch.eye(T).expand(B, T, T)
    padded = torch.cat([batch.target_mapping, torch.zeros(B, 2, T)], dim=1)  # zero rows
    for tm in (eye, padded):
        with torch.no_grad():
            _, g = model.streams(batch.input_ids, batch.attention, None if tm is eye else tm)
            out = hf(batch.input_ids, perm_mask=(~batch.attention.permutation_allowed()).float(),
                     target_mapping=tm)  # fmt: skip
        assert (model.logits(g) - out.logits).abs().max().item() < 1e-5


def test_content_stream_and_segments_match_hf(model, hf):
    x = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(5))
    types = (torch.arange(T) >= T // 3).long().expand(2, T)
    perm = plm_batch(5, B=2).attention
    with torch.no_grad():
        h, _ = model.streams(x, AttentionSpec("bidirectional"), query_stream=False)
        theirs = hf.transformer(x).last_hidden_state
        assert (h - theirs).abs().max().item() < 1e-5
        _, g = model.streams(x, perm, None, token_type_ids=types)
        eye = torch.eye(T).expand(2, T, T)
        out = hf(
            x,
            perm_mask=(~perm.permutation_allowed()).float(),
            target_mapping=eye,
            token_type_ids=types,
        )
    assert (model.logits(g) - out.logits).abs().max().item() < 1e-5


def test_clamp_len_matches_hf():
    model = make_model(1, clamp_len=7)
    hf = to_hf(model)
    assert hf.config.clamp_len == 7
    batch = plm_batch(6)
    with torch.no_grad():
        _, g = model.streams(batch.input_ids, batch.attention, batch.target_mapping)
    assert (model.logits(g) - hf_out(hf, batch).logits).abs().max().item() < 1e-5


def test_round_trip_is_exact(model, hf):
    back = from_hf(hf)
    assert back.cfg == model.cfg
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert hf_config(model.cfg).dropout == 0.0


def test_from_hf_refuses_what_it_cannot_express():
    cfg = hf_config(make_model().cfg)
    cfg.ff_activation = "relu"
    cfg.bi_data = True
    with pytest.raises(ValueError, match="ff_activation.*bi_data"):
        from_hf(transformers.XLNetLMHeadModel(cfg))
    with pytest.raises(ValueError, match="XLNetLMHeadModel"):
        from_hf(transformers.XLNetModel(cfg))
