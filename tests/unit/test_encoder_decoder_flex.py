"""T5 through FlexAttention computes what the dense SDPA path computes: pads, documents and
prefixes hidden by block masks, the relative position bias added by a ``score_mod``.

The forward runs on CPU (unfused); the kernel's backward needs CUDA (``tests/gpu/test_cuda.py``),
and here the gradients are checked through PyTorch's eager FlexAttention with its CPU device
check lifted (``flex_backward_on_cpu``).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM
from pretrain.objectives.base import AttentionSpec, ModelBatch
from tests.helpers import assert_close_to_scale, projected_sum

VOCAB, PAD, T_ENC, T_DEC = 300, 0, 40, 24

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def twins() -> tuple[EncoderDecoderLM, EncoderDecoderLM]:
    torch.manual_seed(0)
    cfg = EncoderDecoderConfig(
        VOCAB, d_model=64, d_kv=16, n_heads=4, d_ff=128, n_layers=2,
        relative_attention_num_buckets=16, relative_attention_max_distance=20,
    )  # fmt: skip
    dense = EncoderDecoderLM(cfg).eval()
    flex = EncoderDecoderLM(dataclasses.replace(cfg, attention_backend="flex")).eval()
    flex.load_state_dict(dense.state_dict())
    return dense, flex


def batch(spec: AttentionSpec) -> ModelBatch:
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(3, VOCAB, (3, T_ENC), generator=g)
    inputs[1, 30:] = PAD  # padded keys
    inputs[2, 5] = PAD
    targets = torch.randint(3, VOCAB, (3, T_DEC), generator=g)
    return ModelBatch(inputs, targets, spec, decoder_input_ids=targets, objective="span")


SPECS = {
    "bidirectional": AttentionSpec("bidirectional"),
    "documents": AttentionSpec(
        "bidirectional", document_ids=(torch.arange(T_ENC) >= 17).long().expand(3, T_ENC)
    ),
    "prefix": AttentionSpec("prefix", prefix_lengths=torch.tensor([7, 20, 0])),
}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_flex_forward_matches_the_dense_path(kind):
    dense, flex = twins()
    b = batch(SPECS[kind])
    assert flex.uses_flex(b.attention) and not dense.uses_flex(b.attention)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        want, got = dense(b), flex(b)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_flex_backend_is_validated():
    with pytest.raises(ValueError, match="attention_backend.*valid: sdpa, flex, auto"):
        EncoderDecoderConfig(VOCAB, attention_backend="xformers")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_flex_gradients_match_the_dense_path(flex_backward_on_cpu, kind):
    """Through PyTorch's eager FlexAttention, differentiated on the CPU
    (``flex_backward_on_cpu``), the flex path's gradients equal the dense path's, the
    relative-position tables' (read by the ``score_mod``) included."""
    dense, flex = twins()
    b = batch(SPECS[kind])
    grads = []
    for model in (dense, flex):
        model.zero_grad()
        projected_sum(model(b)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "encoder_position_bias.embed.weight" in grads[1]
    for name, want in grads[0].items():
        assert_close_to_scale(grads[1][name], want, 1e-4, name)
