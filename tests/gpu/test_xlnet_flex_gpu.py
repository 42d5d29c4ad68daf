"""XLNet through FlexAttention on CUDA: forward and backward (the position table's gradient
flows back through the kernel) match the dense SDPA path, for both position encodings.

Skipped without a GPU (CI has none); run on one with ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.losses import cross_entropy_sum
from pretrain.models.xlnet import XLNetLM, xlnet_config
from pretrain.objectives.plm import PermutationLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
def test_xlnet_flex_forward_and_backward_match_dense(position_encoding):
    torch.manual_seed(0)
    B, T, V = 4, 256, 500
    cfg = xlnet_config("debug", V, position_encoding=position_encoding)
    dense = XLNetLM(cfg).to(CUDA)
    flex = XLNetLM(dataclasses.replace(cfg, attention_backend="flex")).to(CUDA)
    flex.load_state_dict(dense.state_dict())
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, V, (B, T + 1), generator=g)
    zeros = torch.zeros_like(tokens)
    tb = TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))
    batch = PermutationLM([0, 1], mask_id=2)(tb, g).to(CUDA)
    assert flex.uses_flex(batch.attention)
    losses = []
    for model in (dense, flex):
        total, count, _ = cross_entropy_sum(
            model(batch), batch.labels, model.output_weight, output_bias=model.output_bias
        )
        (total / count).backward()
        losses.append(float(total / count))
    assert abs(losses[0] - losses[1]) < 1e-4, losses
    for (name, p_dense), p_flex in zip(dense.named_parameters(), flex.parameters(), strict=True):
        if p_dense.grad is None:  # the segment terms: no token types in pretraining
            assert p_flex.grad is None, name
            continue
        assert _rel_err(p_flex.grad, p_dense.grad) < 1e-3, name
