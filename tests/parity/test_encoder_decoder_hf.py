"""EncoderDecoderLM against Hugging Face T5ForConditionalGeneration (T5 v1.1; DESIGN.md §7)."""

from __future__ import annotations

import pytest
import torch

from pretrain.generate_encoder_decoder import generate_encoder_decoder
from pretrain.losses import cross_entropy_sum
from pretrain.models.encoder_decoder import (
    EncoderDecoderConfig,
    EncoderDecoderLM,
    encoder_decoder_config,
)
from pretrain.models.encoder_decoder.hf import from_hf, hf_config, to_hf
from pretrain.objectives.base import IGNORE_INDEX, AttentionSpec, ModelBatch

transformers = pytest.importorskip("transformers")

VOCAB = 300
PAD = 0
T_ENC, T_DEC = 40, 24


def make_model(seed: int = 0, **overrides) -> EncoderDecoderLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, d_model=64, d_kv=16, n_heads=4, d_ff=128, n_layers=2)
    # Small buckets and distance so the logarithmic buckets are exercised at these lengths.
    kw.update(relative_attention_num_buckets=16, relative_attention_max_distance=20)
    model = EncoderDecoderLM(EncoderDecoderConfig(**{**kw, **overrides}))
    # Init leaves norms at one, which would hide a swapped or dropped norm.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
        # T5's N(0, 1) head gives logits of std sqrt(d_model) ~ 8 and up to ~30, where fp32
        # rounding of hidden states that agree to ~1e-6 already reaches ~1e-5; a quarter of it
        # keeps the logits of order a few (hidden states are compared directly below).
        model.lm_head.weight.mul_(0.25)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> EncoderDecoderLM:
    return make_model()


@pytest.fixture(scope="module")
def hf(model: EncoderDecoderLM):
    return to_hf(model)


def tokens(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    # 1.. so that no token is padding unless a test puts it there.
    return torch.randint(1, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def padded_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = tokens(seed, (3, T_ENC))
    lengths = torch.tensor([T_ENC, 29, 9])
    real = torch.arange(T_ENC)[None, :] < lengths[:, None]  # (B, T_enc)
    return x.masked_fill(~real, PAD), real


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def batch(x: torch.Tensor, dec: torch.Tensor, **kw) -> ModelBatch:
    labels = torch.full_like(dec, IGNORE_INDEX)
    spec = kw.pop("attention", AttentionSpec("bidirectional"))
    return ModelBatch(x, labels, spec, decoder_input_ids=dec, objective="span", **kw)


def test_logits_match_hf(model: EncoderDecoderLM, hf) -> None:
    assert type(hf).__name__ == "T5ForConditionalGeneration"
    assert hf.config.dropout_rate == 0.0 and not hf.config.scale_decoder_outputs
    assert hf.lm_head.weight is not hf.shared.weight
    x, dec = tokens(1, (3, T_ENC)), tokens(2, (3, T_DEC))
    with torch.no_grad():
        theirs = hf(input_ids=x, decoder_input_ids=dec).logits
        ours = model.logits(model(batch(x, dec)))
    assert ours.shape == (3, T_DEC, VOCAB) and ours.dtype == torch.float32
    assert theirs.abs().max() > 1.0  # not a vacuous comparison
    assert max_diff(ours, theirs) < 1e-5
    with torch.no_grad():
        out = hf(input_ids=x, decoder_input_ids=dec, output_hidden_states=True)
        encoded = model.encode(x)
        decoded = model.decode(dec, encoded)
    assert max_diff(encoded, out.encoder_last_hidden_state) < 1e-5
    assert max_diff(decoded, out.decoder_hidden_states[-1]) < 1e-5


def test_encoder_padding_matches_hf_attention_mask(model: EncoderDecoderLM, hf) -> None:
    """Pad ids are masked keys in the encoder and in cross-attention, as HF's attention_mask."""
    x, real = padded_inputs(3)
    dec = tokens(4, (3, T_DEC))
    with torch.no_grad():
        out = hf(input_ids=x, attention_mask=real.long(), decoder_input_ids=dec)
        ours = model.logits(model(batch(x, dec)))
        encoded = model.encode(x)
        unmasked = hf(input_ids=x, decoder_input_ids=dec).logits
    assert max_diff(ours, out.logits) < 1e-5
    # Pad queries too see only the real keys in both models, so every position agrees.
    assert max_diff(encoded, out.encoder_last_hidden_state) < 1e-5
    # Had the pads been visible, the logits would have moved.
    assert max_diff(unmasked[2], out.logits[2]) > 1e-3


def test_document_ids_keep_packed_inputs_apart(model: EncoderDecoderLM) -> None:
    """An encoder input of two packed documents encodes each as if it were alone."""
    a, b = tokens(5, (1, 15)), tokens(6, (1, 25))
    docs = torch.tensor([[0] * 15 + [1] * 25])
    with torch.no_grad():
        packed = model.encode(torch.cat([a, b], 1), AttentionSpec("bidirectional", docs))
        alone_a, alone_b = model.encode(a), model.encode(b)
    # Relative positions make the offset of the second document irrelevant.
    assert max_diff(packed[:, :15], alone_a) < 1e-5
    assert max_diff(packed[:, 15:], alone_b) < 1e-5


def test_loss_matches_hf_labels(model: EncoderDecoderLM, hf) -> None:
    """HF shifts labels right itself (start = pad, -100 -> pad); we take the shifted ids."""
    x, real = padded_inputs(7)
    labels = tokens(8, (3, T_DEC))
    labels[1, 15:] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    start = torch.full((3, 1), model.cfg.decoder_start_id)
    dec = torch.cat([start, labels[:, :-1]], 1).masked_fill(
        torch.cat([start, labels[:, :-1]], 1) == IGNORE_INDEX, PAD
    )
    assert torch.equal(dec, hf._shift_right(labels))
    with torch.no_grad():
        theirs = hf(input_ids=x, attention_mask=real.long(), labels=labels).loss
        hidden = model(batch(x, dec))
        loss_sum, count, _ = cross_entropy_sum(hidden, labels, model.output_weight)
    assert count.item() == (labels != IGNORE_INDEX).sum().item()
    assert abs(loss_sum.item() / count.item() - theirs.item()) < 1e-5


def test_greedy_generation_matches_hf(model: EncoderDecoderLM, hf) -> None:
    """Cached greedy decoding of padded inputs equals HF's ``generate`` (T5's own loop, from
    the decoder start id), and a plain loop that reruns HF's decoder over all tokens."""
    x, real = padded_inputs(11)
    ours = generate_encoder_decoder(model, x, max_new_tokens=12, temperature=0)
    start = torch.full((3, 1), model.cfg.decoder_start_id)
    with torch.no_grad():
        theirs = hf.generate(
            input_ids=x,
            attention_mask=real.long(),
            max_new_tokens=12,
            do_sample=False,
            decoder_start_token_id=model.cfg.decoder_start_id,
            eos_token_id=None,
            pad_token_id=PAD,
        )
        seq = start
        for _ in range(12):
            logits = hf(input_ids=x, attention_mask=real.long(), decoder_input_ids=seq).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert ours.shape == (3, 12)
    assert torch.equal(ours, theirs[:, 1:])
    assert torch.equal(ours, seq[:, 1:])
    assert len(set(ours.flatten().tolist())) > 3  # not one token repeated


def test_round_trip_is_exact(model: EncoderDecoderLM, hf) -> None:
    back = from_hf(hf)
    assert back.cfg == model.cfg
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, dec = tokens(9, (2, 12)), tokens(10, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(batch(x, dec)), back(batch(x, dec)))


def test_hf_model_has_the_same_parameter_count(model: EncoderDecoderLM, hf) -> None:
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()


def test_t5_v1_1_base_parameter_count_equals_hf() -> None:
    """247,577,856: google/t5-v1_1-base, whose LM head is untied."""
    cfg = encoder_decoder_config("t5-v1_1-base", 32128)
    with torch.device("meta"):  # shapes only
        ours = EncoderDecoderLM(cfg)
        theirs = transformers.T5ForConditionalGeneration(
            transformers.T5Config(
                d_model=768,
                d_kv=64,
                num_heads=12,
                d_ff=2048,
                num_layers=12,
                vocab_size=32128,
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
            )
        )
    shared = theirs.shared.weight.numel()
    # transformers 5 ties the head to the embedding whatever the config says (see hf.py), so
    # HF counts it once; the untied T5 v1.1 count adds one more vocab x d_model matrix.
    tied_count = sum(p.numel() for p in theirs.parameters())
    if theirs.lm_head.weight is theirs.shared.weight:
        tied_count += shared
    assert ours.num_params() == tied_count == 247_577_856
    # Kaplan's N: no vocabulary and no positional embeddings (two 32-bucket x 12-head tables)
    rel_tables = 2 * theirs.config.relative_attention_num_buckets * 12
    assert ours.num_params(exclude_embeddings=True) == 247_577_856 - shared - rel_tables
    ours_hf = hf_config(cfg)
    for key in ("d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers"):
        assert getattr(ours_hf, key) == getattr(theirs.config, key), key


def test_from_hf_reads_an_hf_initialized_model() -> None:
    """HF's own init and dropout 0.1 (off in eval mode) convert to the same logits."""
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    hf = transformers.T5ForConditionalGeneration(config)
    with torch.no_grad():
        hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.shared.weight))
    hf.eval()
    ours = from_hf(hf)
    assert ours.cfg.n_layers == 1 and ours.cfg.n_decoder_layers == 2
    x, dec = tokens(11, (2, 10)), tokens(12, (2, 6))
    with torch.no_grad():
        theirs = hf(input_ids=x, decoder_input_ids=dec).logits
        assert max_diff(ours.logits(ours(batch(x, dec))), theirs) < 1e-5


def test_from_hf_refuses_the_original_t5() -> None:
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1
    )  # ReLU feed-forward, tied head, output rescaling
    with pytest.raises(ValueError, match="feed_forward_proj.*rescaling.*tied"):
        from_hf(transformers.T5ForConditionalGeneration(config))
