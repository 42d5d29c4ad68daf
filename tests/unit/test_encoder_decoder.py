"""EncoderDecoderLM (T5 v1.1) without Hugging Face: shapes, masks, init, configs."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.losses import cross_entropy_sum
from pretrain.models.encoder_decoder import (
    SIZES,
    EncoderDecoderConfig,
    EncoderDecoderLM,
    encoder_decoder_config,
)
from pretrain.models.encoder_decoder.model import relative_position_bucket
from pretrain.objectives.base import AttentionSpec, ModelBatch
from tests.helpers import assert_close_to_scale, projected_sum

VOCAB = 128


def small(**kw) -> EncoderDecoderLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, d_model=32, d_kv=8, n_heads=4, d_ff=64, n_layers=2)
    return EncoderDecoderLM(EncoderDecoderConfig(**{**cfg, **kw}))


def ids(seed: int, shape: tuple[int, int], vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_config_defaults_and_validation() -> None:
    cfg = EncoderDecoderConfig(vocab_size=VOCAB, n_layers=3)
    assert cfg.n_decoder_layers == 3 and cfg.decoder_start_id == cfg.pad_id == 0
    assert cfg.head_dim == cfg.d_kv and cfg.n_total_layers == 6
    with pytest.raises(ValueError, match="d_kv"):
        EncoderDecoderConfig(vocab_size=VOCAB, d_kv=0)
    with pytest.raises(ValueError, match="pad_id"):
        EncoderDecoderConfig(vocab_size=VOCAB, pad_id=VOCAB)
    with pytest.raises(ValueError, match="unknown encoder_decoder size"):
        encoder_decoder_config("huge", VOCAB)
    with pytest.raises(ValueError, match="unknown EncoderDecoderConfig field"):
        encoder_decoder_config("debug", VOCAB, n_kv_heads=2)


def test_named_sizes() -> None:
    counts = {}
    for size in SIZES:
        vocab = 32128 if size == "t5-v1_1-base" else 4096
        with torch.device("meta"):
            counts[size] = EncoderDecoderLM(encoder_decoder_config(size, vocab)).num_params()
    assert counts == {"debug": 1_303_936, "tiny": 5_115_456, "t5-v1_1-base": 247_577_856}


def test_blocks_hold_encoder_then_decoder() -> None:
    model = small(n_decoder_layers=3)
    assert len(model.blocks) == 5
    assert len(model.encoder_blocks) == 2 and len(model.decoder_blocks) == 3
    assert model.output_weight is model.lm_head.weight
    assert model.output_weight is not model.embed.weight


def test_init_follows_t5_rules() -> None:
    model = EncoderDecoderLM(
        encoder_decoder_config("debug", 4096, init_factor=2.0, d_model=256, d_ff=1024)
    )
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    d, dkv = 256, model.cfg.d_kv
    assert model.embed.weight.std().item() == pytest.approx(2.0, rel=0.02)
    assert attn.q.weight.std().item() == pytest.approx(2.0 * (d * dkv) ** -0.5, rel=0.05)
    assert attn.k.weight.std().item() == pytest.approx(2.0 * d**-0.5, rel=0.05)
    assert mlp.down.weight.std().item() == pytest.approx(2.0 * 1024**-0.5, rel=0.05)
    assert torch.all(model.encoder_norm.weight == 2.0)
    assert model.lm_head.weight.std().item() == pytest.approx(2.0 * d**-0.5, rel=0.02)  # t5x


def test_a_fresh_model_starts_near_the_loss_of_a_uniform_guess() -> None:
    """The LM head's fan-in init (t5x): the first loss is about ln(vocabulary) (8.3 here),
    not the ~30 nats of HF's N(0, 1) head."""
    vocab = 4096
    torch.manual_seed(0)
    model = EncoderDecoderLM(encoder_decoder_config("debug", vocab, d_model=256, d_ff=1024))
    x, dec, labels = ids(1, (4, 64), vocab), ids(2, (4, 16), vocab), ids(3, (4, 16), vocab)
    with torch.no_grad():
        hidden = model(ModelBatch(x, labels, AttentionSpec("bidirectional"), decoder_input_ids=dec))
        loss_sum, count, _ = cross_entropy_sum(hidden, labels, model.output_weight)
    assert abs(loss_sum.item() / count.item() - math.log(vocab)) < 1.0


def test_decoder_is_causal_and_gradients_reach_every_parameter() -> None:
    model = small()
    x, dec = ids(1, (2, 10)), ids(2, (2, 8))
    labels = ids(3, (2, 8))
    hidden = model(ModelBatch(x, labels, AttentionSpec("bidirectional"), decoder_input_ids=dec))
    assert hidden.shape == (2, 8, 32)
    loss_sum, count, _ = cross_entropy_sum(hidden, labels, model.output_weight)
    (loss_sum / count).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    changed = dec.clone()
    changed[:, 5:] = ids(4, (2, 3))
    with torch.no_grad():
        enc = model.encode(x)
        a, b = model.decode(dec, enc), model.decode(changed, enc)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_pad_tokens_are_masked_and_an_all_pad_row_is_finite() -> None:
    model = small()
    x = ids(5, (2, 12))
    x[0, 7:] = 0
    x[1] = 0  # nothing but padding
    dec = ids(6, (2, 5))
    with torch.no_grad():
        hidden = model(ModelBatch(x, dec, AttentionSpec("bidirectional"), decoder_input_ids=dec))
        alone = model.decode(dec[:1], model.encode(x[:1, :7]))
    assert torch.isfinite(hidden).all()
    assert torch.allclose(hidden[:1], alone, atol=1e-5)  # trailing pads change nothing


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_unpadded_inputs_keep_one_position_bias_for_the_batch(monkeypatch, precision) -> None:
    """Without pad keys on a CPU the encoder adds the (1, H, T, T) position bias itself (its
    gradient summed over the batch by the attention) rather than a (B, H, T, T) copy with a
    mask in it: the same outputs and gradients, in fp32 and in bf16. With padding the mask is
    still built."""
    import pretrain.models.encoder_decoder.model as t5

    real_bias, real_visible = t5.additive_bias, t5.all_visible_on_cpu
    masks = []  # the mask each additive_bias call was given
    monkeypatch.setattr(t5, "additive_bias", lambda b, a: masks.append(a) or real_bias(b, a))
    x, dec = ids(8, (3, 12)), ids(9, (3, 5))
    batch = ModelBatch(x, dec, AttentionSpec("bidirectional"), decoder_input_ids=dec)
    encoder_masks, results = [], []
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(t5, "all_visible_on_cpu", lambda keys: False)
        model = small()
        masks.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            hidden = model(batch)
        encoder_masks.append(masks[0])
        projected_sum(hidden).backward()
        table = model.encoder_position_bias.embed.weight
        results.append((hidden.detach(), table.grad, model.blocks[0].attn.q.weight.grad))
    assert encoder_masks[0] is None and encoder_masks[1].shape == (3, 1, 1, 12)
    tol = 1e-5 if precision == torch.float32 else 1e-2  # bf16: sums rounded in another order
    for a, b in zip(*results, strict=True):
        assert_close_to_scale(a, b, tol)
    monkeypatch.setattr(t5, "all_visible_on_cpu", real_visible)
    x[1, 9:] = 0
    masks.clear()
    with torch.no_grad():
        small()(ModelBatch(x, dec, AttentionSpec("bidirectional"), decoder_input_ids=dec))
    assert masks[0].shape == (3, 1, 1, 12) and not masks[0][1, 0, 0, 9:].any()
    assert real_visible(x != 0) is False and real_visible(x.clamp(min=1) != 0) is True


def test_forward_needs_decoder_input_ids() -> None:
    model = small()
    x = ids(7, (1, 4))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(ModelBatch(x, x, AttentionSpec("bidirectional")))


def test_relative_position_buckets() -> None:
    rel = torch.arange(-200, 201)
    both = relative_position_bucket(rel, True, 32, 128)
    back = relative_position_bucket(rel, False, 32, 128)
    assert both.min() == 0 and both.max() == 31 and back.max() == 31  # causal: all 32 look back
    assert both[200] == 0 and both[201] == 17  # distance 0; one key after the query
    assert torch.all(back[200:] == 0)  # the future: one bucket, masked anyway
    assert both[0] == both[50] and back[0] == back[50] == 31  # beyond max_distance: shared
