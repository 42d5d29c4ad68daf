"""Evaluation split over ranks: rank r scores batches r, r + W, ...; every rank runs the same
number of forwards (FSDP gathers weights inside them); the per-rank sums add up to what one
process reports, MLM corruption included."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.eval.perplexity import evaluate
from pretrain.models.encoder.configs import encoder_config
from pretrain.models.encoder.model import EncoderLM
from pretrain.objectives.mlm import MaskedLM

VOCAB, B, T, NUM_BATCHES = 120, 2, 16, 7


def batches() -> list[TokenBatch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(NUM_BATCHES):
        tokens = torch.randint(5, VOCAB, (B, T + 1), generator=g)
        ids = torch.arange(B) + i * B
        out.append(TokenBatch(tokens, torch.zeros_like(tokens), ids * 0, ids))
    return out


class CountingModel(torch.nn.Module):
    """The model, counting its forwards."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.forwards = model, 0
        self.output_weight, self.output_bias = model.output_weight, model.output_bias

    def forward(self, batch):
        self.forwards += 1
        return self.inner(batch)

    def logits(self, hidden):
        return self.inner.logits(hidden)


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_sums_add_up_to_one_process(world_size):
    torch.manual_seed(0)
    model = EncoderLM(encoder_config("debug", VOCAB, d_model=32, n_heads=2, n_layers=1))
    mlm = MaskedLM(mask_id=4, vocab_size=VOCAB, special_ids=[0, 1, 2, 3, 4])
    token_bytes = torch.arange(VOCAB) % 3 + 1
    run = lambda counting, rank, world: evaluate(  # noqa: E731
        counting, mlm, batches(), token_bytes, torch.device("cpu"),
        accuracy=True, rank=rank, world_size=world,
    )  # fmt: skip
    whole = run(CountingModel(model), 0, 1)
    # no process group here: each rank's call returns its own partial sums
    parts = []
    for rank in range(world_size):
        counting = CountingModel(model)
        parts.append(run(counting, rank, world_size))
        assert counting.forwards == math.ceil(NUM_BATCHES / world_size)  # lockstep
    assert sum(p["tokens"] for p in parts) == whole["tokens"]
    assert sum(p["bytes"] for p in parts) == whole["bytes"]
    nats = sum(p["loss"] * p["tokens"] for p in parts)
    assert nats == pytest.approx(whole["loss"] * whole["tokens"], rel=1e-9)
    right = sum(p["accuracy"] * p["tokens"] for p in parts)
    assert right == pytest.approx(whole["accuracy"] * whole["tokens"], rel=1e-9)
    assert whole == run(CountingModel(model), 0, 1)  # the same corruption at every evaluation
