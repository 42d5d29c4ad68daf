"""FlexAttention block masks give the same outputs as the dense SDPA masks (forward, CPU)."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.model import DecoderLM
from pretrain.objectives.base import AttentionSpec
from tests.helpers import assert_close_to_scale, projected_sum

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _docs(B: int, T: int) -> torch.Tensor:
    docs = torch.zeros(B, T, dtype=torch.long)
    docs[0, 40:] = 1
    docs[0, 100:] = 2
    docs[1, 7:] = 5
    return docs


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec_kind", ["causal-docs", "bidirectional-docs", "prefix", "prefix-docs"]
)
def test_flex_block_mask_matches_dense_mask(spec_kind: str):
    torch.manual_seed(0)
    B, T = 2, 128
    sdpa = DecoderLM(decoder_config("debug", 300, d_model=64, n_heads=4, n_kv_heads=2))
    flex = DecoderLM(decoder_config("debug", 300, d_model=64, n_heads=4, n_kv_heads=2,
                                    attention_backend="flex"))  # fmt: skip
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 300, (B, T))
    kind = spec_kind.split("-")[0]
    spec = AttentionSpec(
        kind,
        document_ids=_docs(B, T) if spec_kind.endswith("docs") else None,
        prefix_lengths=torch.tensor([20, 64]) if kind == "prefix" else None,
    )
    with torch.no_grad():
        expected = sdpa.forward_tokens(x, attention=spec)
        got = flex.forward_tokens(x, attention=spec)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("spec_kind", ["causal-docs", "prefix-docs"])
def test_flex_gradients_match_the_dense_mask(flex_backward_on_cpu, spec_kind: str):
    """Through PyTorch's eager FlexAttention, differentiated on the CPU
    (``flex_backward_on_cpu``), training through the block mask gives the dense mask's gradients."""
    torch.manual_seed(0)
    B, T = 2, 64
    cfg = dict(d_model=64, n_heads=4, n_kv_heads=2, qk_norm=True)
    sdpa = DecoderLM(decoder_config("debug", 300, **cfg))
    flex = DecoderLM(decoder_config("debug", 300, attention_backend="flex", **cfg))
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 300, (B, T))
    kind = spec_kind.split("-")[0]
    prefix = torch.tensor([20, 50]) if kind == "prefix" else None
    spec = AttentionSpec(kind, document_ids=_docs(B, T), prefix_lengths=prefix)
    grads = []
    for model in (sdpa, flex):
        projected_sum(model.forward_tokens(x, attention=spec)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():
        assert_close_to_scale(grads[1][name], want, 1e-4, name)
