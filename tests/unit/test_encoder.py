"""EncoderLM behaviour: bidirectionality, document masking, the MLM head, init, sizes, config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.models.encoder import SIZES, EncoderConfig, EncoderLM, encoder_config
from pretrain.objectives.base import AttentionSpec, ModelBatch
from tests.helpers import projected_sum

VOCAB = 256
BIDI = AttentionSpec("bidirectional")


def make_model(seed: int = 0, **overrides) -> EncoderLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
    return EncoderLM(EncoderConfig(**{**kw, **overrides})).eval()


@pytest.fixture(scope="module")
def model() -> EncoderLM:
    return make_model()


def hidden(model: EncoderLM, x: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_tokens(x, **kw)


def tokens(seed: int, shape: tuple[int, int] = (2, 16)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def test_forward_returns_the_head_transform_and_logits_finish_the_head(model: EncoderLM) -> None:
    x = tokens(0, (2, 10))
    with torch.no_grad():
        h = model(ModelBatch(input_ids=x, labels=x, attention=BIDI, objective="mlm"))
        encoded = model.encode(x)
    assert h.shape == (2, 10, 64)
    assert torch.equal(h, model.forward_tokens(x, attention=BIDI))
    # The transform (dense + GELU + LayerNorm) sits between the encoder and the vocabulary.
    head = model.head
    torch.testing.assert_close(h, head.norm(F.gelu(head.dense(encoded))), rtol=0, atol=0)
    out = model.logits(h)
    assert out.shape == (2, 10, VOCAB) and out.dtype == torch.float32
    assert model.output_weight is model.embed.weight  # tied to the word embedding
    assert model.output_bias.shape == (VOCAB,)
    torch.testing.assert_close(out, h @ model.embed.weight.T + model.output_bias)


def test_attention_none_means_bidirectional(model: EncoderLM) -> None:
    x = tokens(1)
    assert torch.equal(hidden(model, x), hidden(model, x, attention=BIDI))


@pytest.mark.parametrize("t", [3, 15])
def test_bidirectional_a_later_token_changes_earlier_positions(model: EncoderLM, t: int) -> None:
    x = tokens(t)
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % VOCAB
    a, b = hidden(model, x, attention=BIDI), hidden(model, y, attention=BIDI)
    earlier = (a[:, :t] - b[:, :t]).abs().amax(dim=-1)  # (B, t)
    assert (earlier > 1e-4).all()  # every earlier position sees the change


def _packed() -> tuple[torch.Tensor, torch.Tensor, AttentionSpec]:
    """Row 0: documents A(0..4) B(5..11) C(12..15); row 1: D(0..8) E(9..15)."""
    docs = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4, [3] * 9 + [4] * 7])
    pos = torch.stack(
        [torch.cat([torch.arange(n) for n in torch.unique_consecutive(d, return_counts=True)[1]])
         for d in docs]
    )  # fmt: skip
    return docs, pos, AttentionSpec("bidirectional", document_ids=docs)


def test_documents_never_attend_to_each_other(model: EncoderLM) -> None:
    docs, pos, spec = _packed()
    x = tokens(2)
    packed = hidden(model, x, position_ids=pos, attention=spec)
    # Rewrite document B (the middle one): A before it and C after it stay exactly put.
    y = x.clone()
    y[0, 5:12] = (y[0, 5:12] + 1 + torch.arange(7)) % VOCAB
    moved = hidden(model, y, position_ids=pos, attention=spec)
    others = docs != 1
    torch.testing.assert_close(moved[others], packed[others], rtol=0, atol=1e-6)
    assert (moved[0, 5:12] - packed[0, 5:12]).abs().max() > 1e-3
    # And without document ids the same rewrite leaks everywhere.
    leaky = hidden(model, y, position_ids=pos, attention=BIDI)
    assert (leaky[0, :5] - hidden(model, x, position_ids=pos)[0, :5]).abs().max() > 1e-4


def test_a_packed_document_equals_the_document_alone(model: EncoderLM) -> None:
    _, pos, spec = _packed()
    x = tokens(3)
    packed = hidden(model, x, position_ids=pos, attention=spec)
    for row, start, end in [(0, 0, 5), (0, 5, 12), (0, 12, 16), (1, 0, 9), (1, 9, 16)]:
        alone = hidden(model, x[row : row + 1, start:end])
        torch.testing.assert_close(packed[row : row + 1, start:end], alone, rtol=1e-5, atol=1e-5)


def test_token_type_zero_is_the_default(model: EncoderLM) -> None:
    x = tokens(4)
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    assert torch.equal(hidden(model, x), hidden(model, x, token_type_ids=zeros))
    assert (hidden(model, x) - hidden(model, x, token_type_ids=ones)).abs().max() > 1e-3


def test_sequences_longer_than_the_position_table_are_refused(model: EncoderLM) -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward_tokens(tokens(5, (1, 65)))


def test_init_follows_bert() -> None:
    model = make_model(d_model=128, d_ff=512, pad_id=3, init_std=0.02)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):  # linear and LayerNorm biases, and the output bias
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # every matrix and embedding: N(0, 0.02), no depth scaling
            assert p.ndim == 2, name
            values = p if name != "embed.weight" else p[torch.arange(VOCAB) != 3]
            assert abs(values.mean().item()) < 2e-3, name
            assert values.std().item() == pytest.approx(0.02, rel=0.1), name
    assert torch.equal(model.embed.weight[3], torch.zeros(128))  # padding row


def test_pad_row_gets_no_input_gradient_and_init_weights_redraws() -> None:
    model = make_model(pad_id=0).train()
    x = torch.tensor([[5, 6, 0, 0]])
    projected_sum(model.encode(x)).backward()  # the input side only: the output side is tied
    assert torch.equal(model.embed.weight.grad[0], torch.zeros(64))
    assert model.embed.weight.grad[5].abs().sum() > 1e-3
    with torch.device("meta"):
        lazy = EncoderLM(model.cfg)
    lazy.to_empty(device="cpu")
    lazy.init_weights()
    assert torch.isfinite(lazy.embed.weight).all()
    assert lazy.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(lazy.output_bias, torch.zeros(VOCAB))


def test_num_params_and_flops_fields(model: EncoderLM) -> None:
    d, V, L, ff = 64, VOCAB, 2, 256
    block = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d  # attn, mlp, two LayerNorms
    head = d * d + d + 2 * d + V  # transform dense + LayerNorm, output bias
    embeddings = V * d + 64 * d + 2 * d
    assert model.num_params() == embeddings + 2 * d + L * block + head
    assert model.num_params(exclude_embeddings=True) == 2 * d + L * block + head
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.head_dim) == (2, 4, 16)
    assert len(model.blocks) == 2


@pytest.mark.parametrize(("size", "low", "high"), [("debug", 0.9e6, 1.1e6), ("tiny", 4e6, 5.5e6)])
def test_named_sizes(size: str, low: float, high: float) -> None:
    with torch.device("meta"):
        n = EncoderLM(encoder_config(size, 4096)).num_params()
    assert low < n < high
    cfg = encoder_config("bert-base", 30522)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.max_seq_len) == (
        768, 12, 12, 3072, 512
    )  # fmt: skip
    assert cfg.norm_eps == 1e-12 and cfg.type_vocab_size == 2


def test_unknown_size_and_field_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="bert-large.*valid: " + ", ".join(SIZES)):
        encoder_config("bert-large", 1000)
    with pytest.raises(ValueError, match="rope_theta.*valid:.*d_model"):
        encoder_config("debug", 1000, rope_theta=1e4)
    assert encoder_config("debug", 1000, n_layers=3).n_layers == 3


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=-8), "d_model"),
        (dict(n_layers=1.5), "n_layers"),
        (dict(d_model=60, n_heads=8), "d_model .60. must be divisible by n_heads .8."),
        (dict(d_ff=0), "d_ff"),
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(type_vocab_size=0), "type_vocab_size"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(init_std=-0.02), "init_std"),
        (dict(pad_id=VOCAB), "pad_id"),
        (dict(style="roberta"), "style.*valid: bert"),
        (dict(attention_backend="xformers"), "attention_backend.*valid: sdpa, flex, auto"),
    ],
)
def test_config_validation_names_the_field(overrides: dict, named: str) -> None:
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match=named):
        EncoderConfig(**{**kw, **overrides})


@pytest.mark.slow
def test_flex_block_mask_matches_dense_mask() -> None:
    docs, pos, spec = _packed()
    sdpa = make_model()
    flex = make_model(attention_backend="flex")
    flex.load_state_dict(sdpa.state_dict())
    x = tokens(6)
    expected = hidden(sdpa, x, position_ids=pos, attention=spec)
    torch.testing.assert_close(
        hidden(flex, x, position_ids=pos, attention=spec), expected, atol=2e-5, rtol=1e-4
    )
