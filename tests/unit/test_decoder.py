"""DecoderLM behaviour: causality, document masking, sizes, init, config validation."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.common.attention import attention_mask
from pretrain.models.decoder import DecoderConfig, DecoderLM, decoder_config
from pretrain.objectives.base import AttentionSpec, ModelBatch

VOCAB = 256
STYLES = {
    "llama-gqa": dict(style="llama", n_kv_heads=2),
    "llama-qknorm": dict(style="llama", qk_norm=True),
    "gpt2": dict(style="gpt2"),
}


def make_model(seed: int = 0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
    return DecoderLM(DecoderConfig(**{**kw, **overrides})).eval()


@pytest.fixture(params=list(STYLES), ids=list(STYLES))
def model(request) -> DecoderLM:
    return make_model(**STYLES[request.param])


def logits(model: DecoderLM, x: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.forward_tokens(x, **kw))


def test_forward_returns_final_hidden_states_not_logits(model: DecoderLM) -> None:
    x = torch.randint(0, VOCAB, (2, 10))
    batch = ModelBatch(input_ids=x, labels=x, attention=AttentionSpec())
    with torch.no_grad():
        hidden = model(batch)
    assert hidden.shape == (2, 10, 64)
    assert torch.equal(hidden, model.forward_tokens(x))
    out = model.logits(hidden)
    assert out.shape == (2, 10, VOCAB) and out.dtype == torch.float32
    assert model.output_weight.shape == (VOCAB, 64)


def test_tied_output_weight_is_the_embedding() -> None:
    tied, untied = make_model(tie_embeddings=True), make_model(tie_embeddings=False)
    assert tied.output_weight is tied.embed.weight
    assert untied.output_weight is untied.lm_head.weight
    assert untied.num_params() - tied.num_params() == VOCAB * 64


@pytest.mark.parametrize("t", [1, 7, 15])
def test_causal_changing_token_t_never_changes_earlier_positions(model: DecoderLM, t: int) -> None:
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(t))
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % VOCAB
    a, b = logits(model, x), logits(model, y)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4  # the change itself is visible


def test_documents_never_attend_to_each_other(model: DecoderLM) -> None:
    # Row 0: documents [0]*6 + [1]*10; row 1: [3]*9 + [4]*7. Positions restart per document.
    docs = torch.tensor([[0] * 6 + [1] * 10, [3] * 9 + [4] * 7])
    starts = [6, 9]
    pos = torch.stack([torch.cat([torch.arange(s), torch.arange(16 - s)]) for s in starts])
    spec = AttentionSpec(document_ids=docs)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    packed = logits(model, x, position_ids=pos, attention=spec)

    # Rewriting the first document never moves the second one's logits.
    y = x.clone()
    for row, s in enumerate(starts):
        y[row, :s] = torch.randint(0, VOCAB, (s,))
    torch.testing.assert_close(
        logits(model, y, position_ids=pos, attention=spec)[0, 6:], packed[0, 6:], rtol=0, atol=1e-6
    )
    # Each document alone, with the same positions, gives the packed logits.
    for row, s in enumerate(starts):
        for lo, hi in ((0, s), (s, 16)):
            alone = logits(model, x[row : row + 1, lo:hi], position_ids=pos[row : row + 1, lo:hi])
            torch.testing.assert_close(alone[0], packed[row, lo:hi], rtol=0, atol=1e-5)


def test_prefix_attention_is_bidirectional_inside_the_prefix() -> None:
    model = make_model()
    x = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    spec = AttentionSpec(kind="prefix", prefix_lengths=torch.tensor([5]))
    y = x.clone()
    y[0, 3] = (y[0, 3] + 1) % VOCAB  # inside the prefix: earlier prefix positions see it
    a, b = logits(model, x, attention=spec), logits(model, y, attention=spec)
    assert (a[0, :3] - b[0, :3]).abs().max() > 1e-4
    z = x.clone()
    z[0, 8] = (z[0, 8] + 1) % VOCAB  # after the prefix: causal
    c = logits(model, z, attention=spec)
    torch.testing.assert_close(a[0, :8], c[0, :8], rtol=0, atol=1e-6)


def test_attention_mask_descriptions() -> None:
    assert attention_mask(AttentionSpec(), 4) is None
    assert attention_mask(AttentionSpec(kind="bidirectional"), 4) is None
    causal = torch.ones(4, 4).tril().bool()
    docs = torch.tensor([[0, 0, 1, 1]])
    m = attention_mask(AttentionSpec(document_ids=docs), 4)
    same = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).bool()
    assert m.shape == (1, 1, 4, 4) and torch.equal(m[0, 0], causal & same)
    m = attention_mask(AttentionSpec(kind="bidirectional", document_ids=docs), 4)
    assert torch.equal(m[0, 0], same)
    m = attention_mask(AttentionSpec(kind="prefix", prefix_lengths=torch.tensor([2, 0])), 4)
    assert torch.equal(m[0, 0], causal | torch.tensor([1, 1, 0, 0]).bool())
    assert torch.equal(m[1, 0], causal)
    perm = torch.rand(2, 4, 4) > 0.5  # True = may NOT attend (XLNet's perm_mask)
    m = attention_mask(AttentionSpec(kind="permutation", permutation_mask=perm), 4)
    assert torch.equal(m[:, 0], ~perm)
    with pytest.raises(ValueError, match="prefix_lengths"):
        attention_mask(AttentionSpec(kind="prefix"), 4)
    with pytest.raises(ValueError, match="permutation_mask"):
        attention_mask(AttentionSpec(kind="permutation"), 4)


def _count(size: str, vocab: int) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init time
        return DecoderLM(decoder_config(size, vocab)).num_params()


def test_named_size_parameter_counts() -> None:
    assert _count("gpt2-small", 50257) == 124_439_808  # HF GPT2LMHeadModel
    assert _count("llama-1b", 128256) == 1_235_814_400  # HF Llama-3.2-1B
    assert 0.8e6 <= _count("debug", 4096) <= 1.3e6
    assert 4.0e6 <= _count("tiny", 4096) <= 6.0e6


def test_gpt2_small_shape() -> None:
    cfg = decoder_config("gpt2-small", 50257)
    assert (cfg.style, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff) == (
        "gpt2",
        768,
        12,
        12,
        3072,
    )
    assert cfg.tie_embeddings and cfg.bias and cfg.max_seq_len == 1024


def test_exclude_embeddings_removes_token_and_position_tables() -> None:
    m = make_model(style="gpt2")
    assert m.num_params() - m.num_params(exclude_embeddings=True) == (VOCAB + 64) * 64


def test_init_statistics() -> None:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=1024, d_model=256, n_layers=8, n_heads=4, style="gpt2")
    m = DecoderLM(cfg)
    residual = 0.02 / (2 * 8) ** 0.5
    for block in m.blocks:
        for w in (block.attn.out.weight, block.mlp.down.weight):
            assert w.mean().abs() < 1e-3
            assert w.std().item() == pytest.approx(residual, rel=0.05)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.attn_norm.weight == 1)
    assert m.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_init_weights_rebuilds_a_meta_model() -> None:
    """The FSDP path: build on meta, materialize, init; RoPE tables are rebuilt too."""
    reference = make_model()
    with torch.device("meta"):
        m = DecoderLM(reference.cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    assert torch.equal(m.rope.cos, reference.rope.cos) and torch.equal(
        m.rope.sin, reference.rope.sin
    )
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_learned_positions_refuse_sequences_past_max_seq_len() -> None:
    m = make_model(style="gpt2", max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        m.forward_tokens(torch.zeros(1, 9, dtype=torch.long))


def test_derived_ffn_width() -> None:
    assert DecoderConfig(vocab_size=8, d_model=256).d_ff == 768  # 8/3 * 256 -> multiple of 256
    assert DecoderConfig(vocab_size=8, d_model=256, style="gpt2").d_ff == 1024
    assert DecoderConfig(vocab_size=8, d_model=256, ffn_multiple_of=64).d_ff == 704


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(d_model=100, n_heads=3), "d_model"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
        (dict(style="bert"), "style"),
        (dict(n_layers=0), "n_layers"),
        (dict(d_ff=-1), "d_ff"),
        (dict(d_model=24, n_heads=8), "head_dim"),  # head_dim 3: odd, no RoPE
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(n_layers=True), "n_layers"),  # a bool is not a layer count
        (dict(attention_backend="flash"), "attention_backend.*valid: sdpa, flex, auto"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DecoderConfig(vocab_size=VOCAB, **kwargs)


def test_decoder_config_errors_list_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="gpt2-small"):
        decoder_config("huge", 100)
    with pytest.raises(ValueError, match="n_layer"):
        decoder_config("tiny", 100, n_layer=3)
    cfg = decoder_config("tiny", 100, n_layers=3, style="gpt2", d_model=96, n_heads=3)
    assert (cfg.n_layers, cfg.style, cfg.d_model, cfg.bias, cfg.d_ff) == (3, "gpt2", 96, True, 384)
