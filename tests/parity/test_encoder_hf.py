"""EncoderLM against Hugging Face BertForMaskedLM (DESIGN.md §7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import cross_entropy_sum
from pretrain.models.common.attention import attention_mask
from pretrain.models.encoder import EncoderConfig, EncoderLM, encoder_config
from pretrain.models.encoder.hf import from_hf, hf_config, to_hf
from pretrain.objectives.base import IGNORE_INDEX, AttentionSpec
from tests.helpers import perturb_norms_and_biases

transformers = pytest.importorskip("transformers")

VOCAB = 300
T = 48


def make_model(seed: int = 0, **overrides) -> EncoderLM:
    torch.manual_seed(seed)
    # init_std 0.1, not 0.02: pre-activations of order one, where erf and tanh GELU differ by
    # ~6e-4 in the logits (at 0.02 they differ by ~2e-6, under the 1e-5 bar).
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=128, init_std=0.1)
    model = EncoderLM(EncoderConfig(**{**kw, **overrides}))
    return perturb_norms_and_biases(model).eval()


@pytest.fixture(scope="module")
def model() -> EncoderLM:
    return make_model()


@pytest.fixture(scope="module")
def hf(model: EncoderLM):
    return to_hf(model)


def tokens(seed: int, shape: tuple[int, int] = (3, T)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def our_logits(model: EncoderLM, x: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.forward_tokens(x, **kw))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_logits_match_hf(model: EncoderLM, hf) -> None:
    assert type(hf).__name__ == "BertForMaskedLM"
    assert hf.config.hidden_act == "gelu" and hf.config.hidden_dropout_prob == 0.0
    x = tokens(1)
    with torch.no_grad():
        # HF defaults: attention_mask None (everything visible), token_type_ids all zero.
        theirs = hf(x).logits
    ours = our_logits(model, x)
    assert ours.shape == (3, T, VOCAB) and ours.dtype == torch.float32
    assert max_diff(ours, theirs) < 1e-5


def test_token_types_and_explicit_positions_match_hf(model: EncoderLM, hf) -> None:
    x = tokens(2, (2, 20))
    types = torch.zeros_like(x)
    types[:, 9:] = 1  # a sentence pair
    pos = torch.arange(5, 25).expand(2, 20)
    with torch.no_grad():
        theirs = hf(x, token_type_ids=types, position_ids=pos).logits
    ours = our_logits(model, x, position_ids=pos, token_type_ids=types)
    assert max_diff(ours, theirs) < 1e-5


def test_padding_as_its_own_document_matches_hf_attention_mask(model: EncoderLM, hf) -> None:
    """HF's (B, T) padding mask hides pad keys; pads in a document of their own do the same.

    Pad queries differ (HF lets them see the real tokens, we let them see the pads); nobody reads
    them, so only real positions are compared.
    """
    x = tokens(3)
    lengths = torch.tensor([T, 30, 11])
    real = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    with torch.no_grad():
        theirs = hf(x, attention_mask=real.long()).logits
    ours = our_logits(
        model, x, attention=AttentionSpec("bidirectional", document_ids=(~real).long())
    )
    assert max_diff(ours[real], theirs[real]) < 1e-5
    # Had the pads been visible, the real positions would have moved.
    assert max_diff(our_logits(model, x)[1, :30], theirs[1, :30]) > 1e-3


def test_packed_documents_match_hf_with_the_same_4d_mask(model: EncoderLM, hf) -> None:
    """Document masking in full: HF's SDPA path takes our (B, 1, T, T) boolean mask as is."""
    docs = torch.tensor([[0] * 10 + [1] * 25 + [2] * 13, [7] * 30 + [8] * 18, [0] * T])
    pos = torch.stack(
        [torch.cat([torch.arange(n) for n in torch.unique_consecutive(d, return_counts=True)[1]])
         for d in docs]
    )  # fmt: skip
    spec = AttentionSpec("bidirectional", document_ids=docs)
    x = tokens(4)
    with torch.no_grad():
        theirs = hf(x, attention_mask=attention_mask(spec, T), position_ids=pos).logits
    ours = our_logits(model, x, position_ids=pos, attention=spec)
    assert max_diff(ours, theirs) < 1e-5


def test_mlm_loss_matches_hf(model: EncoderLM, hf) -> None:
    x = tokens(5)
    gen = torch.Generator().manual_seed(6)
    labels = torch.where(torch.rand(x.shape, generator=gen) < 0.15, x, IGNORE_INDEX)
    labels[0, 0] = x[0, 0]  # at least one label
    with torch.no_grad():
        theirs = hf(x, labels=labels).loss  # CrossEntropyLoss: mean over labels != -100
        hidden = model.forward_tokens(x)
        picked = labels != IGNORE_INDEX
        ours = F.cross_entropy(model.logits(hidden)[picked], labels[picked])
        # The training loss: chunked, through output_weight and output_bias, never full logits.
        loss_sum, count, _ = cross_entropy_sum(
            hidden, labels, model.output_weight, output_bias=model.output_bias
        )
    assert abs(ours.item() - theirs.item()) < 1e-5
    assert count.item() == picked.sum().item()
    assert abs(loss_sum.item() / count.item() - theirs.item()) < 1e-5


def test_round_trip_is_exact(model: EncoderLM, hf) -> None:
    back = from_hf(hf)
    assert back.cfg == model.cfg
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = tokens(7, (2, 20))
    assert torch.equal(our_logits(model, x), our_logits(back, x))


def test_hf_model_has_the_same_parameter_count(model: EncoderLM, hf) -> None:
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight


def test_bert_base_parameter_count_equals_hf() -> None:
    with torch.device("meta"):  # shapes only: no 110M-parameter init
        ours = EncoderLM(encoder_config("bert-base", 30522))
        theirs = transformers.BertForMaskedLM(transformers.BertConfig())
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters()) == 109_514_298
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "vocab_size",
    ):
        assert getattr(hf_config(ours.cfg), key) == getattr(theirs.config, key), key  # fmt: skip


def _hf_bert(**overrides):
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    return transformers.BertForMaskedLM(transformers.BertConfig(**{**kw, **overrides}))


def test_from_hf_reads_an_hf_initialized_model() -> None:
    """HF's own init, pad id 0 and dropout 0.1 (off in eval mode) convert to the same logits."""
    hf = _hf_bert().eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()  # HF starts it at zero
    ours = from_hf(hf)
    assert ours.cfg.pad_id == 0 and ours.embed.padding_idx == 0
    assert torch.equal(ours.output_bias, hf.cls.predictions.decoder.bias)
    x = tokens(8, (2, 12))
    with torch.no_grad():
        assert max_diff(our_logits(ours, x), hf(x).logits) < 1e-5


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(hidden_act="gelu_new"), "hidden_act"),
        (dict(is_decoder=True), "is_decoder"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    ],
)
def test_from_hf_refuses_what_it_cannot_express(overrides: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        from_hf(_hf_bert(**overrides))


def test_from_hf_refuses_other_architectures() -> None:
    config = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(ValueError, match="RobertaForMaskedLM"):
        from_hf(transformers.RobertaForMaskedLM(config))


def test_from_hf_upcasts_bf16_checkpoints_to_fp32_master_weights() -> None:
    hf = _hf_bert().to(torch.bfloat16)
    assert from_hf(hf).embed.weight.dtype == torch.float32
    kept = from_hf(hf, dtype=None)
    assert kept.embed.weight.dtype == torch.bfloat16
    assert torch.equal(kept.embed.weight, hf.bert.embeddings.word_embeddings.weight)
