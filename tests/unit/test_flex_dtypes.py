"""Under autocast, every FlexAttention call gets its three operands in autocast's dtype.

XLNet's query is ``q + r_w_bias`` with a float32 bias, so it comes out float32 under bf16
autocast while the keys and values are bf16; a QK-norm can do the same. SDPA is cast by
autocast, FlexAttention is not in every PyTorch version, and float32 operands make it run its
float32 kernels. ``pretrain.models.common.flex.attend`` casts (checked directly below); the
family tests check what reaches the kernel end to end (XLNet's query is float32 without the
cast; the decoder's and T5's operands are bf16 already on this PyTorch, and must stay so).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module

from pretrain.data.loader import TokenBatch
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.model import DecoderLM
from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM
from pretrain.models.xlnet import XLNetConfig, XLNetLM
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.objectives.plm import PermutationLM

VOCAB = 200


@pytest.fixture
def operand_dtypes(monkeypatch):
    """The dtypes of (q, k, v) of every ``flex_attention`` call, recorded."""
    seen: list[tuple[torch.dtype, ...]] = []
    real = flex_module.flex_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(flex_module, "flex_attention", spy)
    torch._dynamo.reset()
    return seen


def run_bf16(fn):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        return fn()


@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
def test_xlnet_streams(operand_dtypes, position_encoding):
    cfg = XLNetConfig(VOCAB, d_model=64, n_layers=2, n_heads=4, attention_backend="flex",
                      position_encoding=position_encoding)  # fmt: skip
    model = XLNetLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, VOCAB, (2, 33), generator=g)
    tb = TokenBatch(tokens, torch.zeros_like(tokens), torch.zeros(2, dtype=torch.long),
                    torch.arange(2))  # fmt: skip
    batch = PermutationLM([0, 1], mask_id=2)(tb, g)
    # without the cast, the content and query streams' queries arrive in float32
    run_bf16(lambda: model.streams(batch.input_ids, batch.attention, batch.target_mapping))
    assert len(operand_dtypes) == 2 * cfg.n_layers  # both streams, every layer
    assert set(operand_dtypes) == {(torch.bfloat16,) * 3}


def test_decoder_with_qk_norm(operand_dtypes):
    cfg = decoder_config("debug", VOCAB, d_model=64, n_heads=4, n_kv_heads=2, qk_norm=True,
                         attention_backend="flex")  # fmt: skip
    model = DecoderLM(cfg).eval()
    docs = torch.zeros(2, 32, dtype=torch.long)
    docs[0, 10:] = 1
    spec = AttentionSpec("causal", document_ids=docs)
    run_bf16(lambda: model.forward_tokens(torch.randint(0, VOCAB, (2, 32)), attention=spec))
    assert operand_dtypes and set(operand_dtypes) == {(torch.bfloat16,) * 3}


def test_encoder_decoder(operand_dtypes):
    cfg = EncoderDecoderConfig(VOCAB, d_model=64, d_kv=16, n_heads=4, d_ff=128, n_layers=2,
                               attention_backend="flex")  # fmt: skip
    model = EncoderDecoderLM(cfg).eval()
    inputs, targets = torch.randint(3, VOCAB, (2, 20)), torch.randint(3, VOCAB, (2, 8))
    inputs[1, 15:] = cfg.pad_id if cfg.pad_id is not None else 0
    batch = ModelBatch(inputs, targets, AttentionSpec("bidirectional"),
                       decoder_input_ids=targets, objective="span")  # fmt: skip
    run_bf16(lambda: model(batch))
    assert operand_dtypes and set(operand_dtypes) == {(torch.bfloat16,) * 3}


def test_no_cast_without_autocast(operand_dtypes):
    model = XLNetLM(XLNetConfig(VOCAB, d_model=64, n_layers=1, n_heads=4,
                                attention_backend="flex")).eval()  # fmt: skip
    ids = torch.randint(10, VOCAB, (1, 16))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.streams(ids, query_stream=False)
    assert set(operand_dtypes) == {(torch.float32,) * 3}


def test_attend_casts_mixed_operands_under_autocast(operand_dtypes):
    from pretrain.models.common import flex

    q = torch.randn(1, 2, 8, 16)  # float32, as q + a float32 bias comes out
    k, v = torch.randn(2, 1, 2, 8, 16, dtype=torch.bfloat16)
    out = run_bf16(lambda: flex.attend(q, k, v))
    assert operand_dtypes == [(torch.bfloat16,) * 3] and out.dtype == torch.bfloat16
