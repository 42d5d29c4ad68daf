"""XLNetLM's two streams: what each may depend on, and the batch contract with the loss."""

from __future__ import annotations

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.losses import cross_entropy_sum
from pretrain.models.xlnet import XLNetConfig, XLNetLM, xlnet_config
from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.plm import PermutationLM
from tests.helpers import assert_close_to_scale, count_explicit_attention_calls

VOCAB, T = 200, 36


POSITIONS = pytest.mark.parametrize("position_encoding", ["txl", "rope"])


def make_model(position_encoding: str = "txl") -> XLNetLM:
    torch.manual_seed(0)
    cfg = XLNetConfig(
        VOCAB, d_model=32, n_layers=2, n_heads=4, init_std=0.1, position_encoding=position_encoding
    )
    return XLNetLM(cfg).eval()


def plm_batch(seed: int = 0, B: int = 2):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, VOCAB, (B, T + 1), generator=g)
    zeros = torch.zeros_like(tokens)
    tb = TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))
    return PermutationLM([0, 1], mask_id=2)(tb, g)


def perturbed(batch, b: int, i: int):
    ids = batch.input_ids.clone()
    ids[b, i] = (ids[b, i] + 1 + torch.randint(1, VOCAB - 12, ())) % (VOCAB - 10) + 10
    assert ids[b, i] != batch.input_ids[b, i]
    return ids


@POSITIONS
def test_query_stream_at_a_target_never_depends_on_its_own_token(position_encoding):
    model, batch = make_model(position_encoding), plm_batch()
    perm = ~batch.attention.permutation_allowed()
    with torch.no_grad():
        hidden = model(batch)
        for b in range(2):
            targets = torch.nonzero(batch.labels[b] != IGNORE_INDEX).squeeze(1).tolist()
            for i in targets:
                ids = perturbed(batch, b, i)
                h2 = model(type(batch)(**{**batch.__dict__, "input_ids": ids}))
                assert torch.equal(hidden[b, i], h2[b, i]), (b, i)
                # ... while a later target whose order comes after i does change
                later = [j for j in targets if not perm[b, j, i]]
                for j in later:
                    assert not torch.allclose(hidden[b, j], h2[b, j]), (b, i, j)


def first_layer_attention(model: XLNetLM, batch, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention outputs (before the residual) of the first block: content, query stream."""
    seen: list[torch.Tensor] = []
    hook = model.blocks[0].attn.out.register_forward_pre_hook(lambda _, a: seen.append(a[0]))
    try:
        model.streams(ids, batch.attention, batch.target_mapping)
    finally:
        hook.remove()
    return seen[0], seen[1]  # the content stream runs first


@POSITIONS
def test_content_stream_attends_to_its_own_token_the_query_stream_does_not(position_encoding):
    """Through the attention itself, not the residual. (That the content stream also reads its
    own key and value, not only its query, is pinned by the HF parity tests.)"""
    model, batch = make_model(position_encoding), plm_batch(1)
    with torch.no_grad():
        h, g = first_layer_attention(model, batch, batch.input_ids)
        targets = torch.nonzero(batch.labels[0] != IGNORE_INDEX).squeeze(1).tolist()
        for row, i in enumerate(targets):
            h2, g2 = first_layer_attention(model, batch, perturbed(batch, 0, i))
            assert not torch.allclose(h[0, i], h2[0, i], atol=1e-5), i
            assert torch.equal(g[0, row], g2[0, row]), i


@POSITIONS
def test_output_lines_up_with_labels_with_or_without_target_mapping(position_encoding):
    model, batch = make_model(position_encoding), plm_batch(2)
    with torch.no_grad():
        mapped = model(batch)  # (B, T, d), zero where nothing is predicted
        dense = model(type(batch)(**{**batch.__dict__, "target_mapping": None}))
    assert mapped.shape == dense.shape == (2, T, 32)
    targets = batch.labels != IGNORE_INDEX
    torch.testing.assert_close(mapped[targets], dense[targets], atol=1e-6, rtol=1e-6)
    assert (mapped[~targets] == 0).all()
    total, count, _ = cross_entropy_sum(
        mapped, batch.labels, model.output_weight, output_bias=model.output_bias
    )
    assert count == int(targets.sum())
    assert torch.isfinite(total)


@POSITIONS
def test_gradients_reach_every_trained_parameter(position_encoding):
    model, batch = make_model(position_encoding).train(), plm_batch(3)
    total, _, _ = cross_entropy_sum(
        model(batch), batch.labels, model.output_weight, output_bias=model.output_bias
    )
    total.backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    # the segment term is only used with token types (fine-tuning on sentence pairs)
    assert unused == {
        f"blocks.{i}.attn.{n}" for i in range(2) for n in ("segment_bias", "segment_embed")
    }


def test_rope_has_no_transformer_xl_position_weights():
    names = {n for n, _ in make_model("rope").named_parameters()}
    assert not any(n.endswith(("attn.pos.weight", "attn.position_bias")) for n in names)
    assert "blocks.0.attn.pos.weight" in {n for n, _ in make_model("txl").named_parameters()}


def test_rope_scores_depend_on_distance_only():
    """Shifting the whole window's positions by a constant leaves RoPE attention unchanged,
    so with a translation-invariant mask the streams see relative positions only."""
    model = make_model("rope")
    ids = torch.randint(10, VOCAB, (1, T))
    with torch.no_grad():
        base = model.streams(ids)[0]
        shifted = model.positions(T + 5, torch.float32, "cpu")
        cos, sin = shifted.cos[5:], shifted.sin[5:]
        moved = type(shifted)(cos=cos, sin=sin, row_cos=cos[:, None], row_sin=sin[:, None])
        model.positions = lambda *_: moved  # every layer reads positions 5 .. T + 4
        torch.testing.assert_close(model.streams(ids)[0], base, atol=1e-5, rtol=1e-5)


@POSITIONS
def test_the_content_stream_sees_where_tokens_are(position_encoding):
    """The control for the test above: attention without positions is blind to order, so
    swapping two other tokens would leave position 0's state as it was. Each encoding changes
    it (a model that never rotated q and k would not)."""
    model = make_model(position_encoding)
    ids = torch.randint(10, VOCAB, (1, T))
    swapped = ids.clone()
    swapped[0, [3, 9]] = ids[0, [9, 3]]
    with torch.no_grad():
        h, h_swapped = model.streams(ids)[0], model.streams(swapped)[0]
    assert (h[0, 0] - h_swapped[0, 0]).abs().max() > 1e-3


def test_named_sizes_and_bad_values():
    assert xlnet_config("base", 32000).d_ff == 3072
    bad_values = (
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(n_layers=0), "n_layers"),
        (dict(init_std=0), "init_std"),
        (dict(position_encoding="alibi"), "position_encoding.*valid: txl, rope"),
        (dict(attention_backend="xformers"), "attention_backend.*valid: sdpa, flex, auto"),
        (dict(rope_theta=0), "rope_theta"),
    )
    for bad, match in bad_values:
        with pytest.raises(ValueError, match=match):
            XLNetConfig(100, **bad)


@POSITIONS
def test_skipping_the_last_content_output_leaves_the_query_stream_unchanged(position_encoding):
    model, batch = make_model(position_encoding), plm_batch(4)
    args = (batch.input_ids, batch.attention, batch.target_mapping)
    with torch.no_grad():
        h, g = model.streams(*args)
        h_skip, g_skip = model.streams(*args, content_output=False)
    assert h is not None and h_skip is None
    torch.testing.assert_close(g_skip, g, atol=0, rtol=0)
    with pytest.raises(ValueError, match="query stream"):
        model.streams(*args, query_stream=False, content_output=False)


@POSITIONS
def test_explicit_attention_path_gets_the_whole_bias_as_sdpa_does(position_encoding, monkeypatch):
    """Forced in fp32, the explicit path gives both streams what SDPA gives them: the
    permutation mask and (txl) the position and segment scores all reach its float bias.
    (In bf16 the rounding would hide a dropped score at this size.)"""
    import pretrain.models.xlnet.model as xlnet_model

    model, batch = make_model(position_encoding), plm_batch()
    with torch.no_grad():
        sdpa = model(batch)
        calls = count_explicit_attention_calls(monkeypatch)
        monkeypatch.setattr(xlnet_model, "prefers_explicit", lambda *args, **kwargs: True)
        explicit = model(batch)
    assert len(calls) == 3  # 2 layers' query streams, the first layer's content stream
    torch.testing.assert_close(explicit, sdpa, rtol=1e-5, atol=1e-5)


def test_fp32_training_with_txl_scores_takes_the_explicit_path_with_sdpa_gradients(monkeypatch):
    """In fp32 the Transformer-XL position scores make a bias that needs a gradient, which
    SDPA's CPU flash kernel lacks: the explicit path takes the streams, with SDPA's (math
    backend) loss and gradients."""
    from pretrain.models.common import explicit_attention as ea

    model, batch = make_model("txl").train(), plm_batch()
    calls = count_explicit_attention_calls(monkeypatch)

    def step():
        model.zero_grad()
        hidden = model(batch)
        total, count, _ = cross_entropy_sum(hidden, batch.labels, model.output_weight)
        (total / count).backward()
        params = model.named_parameters()
        return total.detach(), {n: p.grad.clone() for n, p in params if p.grad is not None}

    explicit_loss, explicit_grads = step()
    assert len(calls) == 3  # 2 layers' query streams, the first layer's content stream
    monkeypatch.setattr(ea, "MAX_KEYS", 0)
    sdpa_loss, sdpa_grads = step()
    assert len(calls) == 3
    torch.testing.assert_close(explicit_loss, sdpa_loss, rtol=1e-6, atol=0)
    assert explicit_grads.keys() == sdpa_grads.keys()
    assert explicit_grads["blocks.0.attn.pos.weight"].abs().sum() > 0  # through the bias
    for name, grad in explicit_grads.items():
        assert_close_to_scale(grad, sdpa_grads[name], 1e-4, name)


@POSITIONS
def test_in_bf16_on_cpu_the_query_stream_still_never_sees_its_own_token(
    position_encoding, monkeypatch
):
    # bf16 on CPU runs both streams through the explicit-GEMM attention, position and segment
    # scores and the permutation mask in its float bias.
    from pretrain.models.common import explicit_attention as ea

    calls = count_explicit_attention_calls(monkeypatch)
    model, batch = make_model(position_encoding), plm_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(batch)
        assert len(calls) == 3  # 2 layers' query streams, the first layer's content stream
        b = 0
        perm = ~batch.attention.permutation_allowed()
        targets = torch.nonzero(batch.labels[b] != IGNORE_INDEX).squeeze(1).tolist()
        seen_later = 0
        for i in targets:
            h2 = model(type(batch)(**{**batch.__dict__, "input_ids": perturbed(batch, b, i)}))
            assert torch.equal(hidden[b, i], h2[b, i]), i
            later = [j for j in targets if not perm[b, j, i]]  # targets after i in the order
            if later:  # ... do see the token
                assert not torch.equal(hidden[b, later], h2[b, later]), (i, later)
                seen_later += 1
        assert seen_later > 0
        monkeypatch.setattr(ea, "MAX_KEYS", 0)  # the SDPA path, for comparison
        sdpa = model(batch)
    with torch.no_grad():
        exact = model(batch)
    err_explicit = (hidden.float() - exact).abs().max()
    err_sdpa = (sdpa.float() - exact).abs().max()
    assert err_explicit <= 2 * err_sdpa, (err_explicit, err_sdpa)
