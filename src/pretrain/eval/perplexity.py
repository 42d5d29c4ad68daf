"""Validation loss, perplexity and bits per byte.

Bits per byte (tokenizer-independent, as in Gao et al. 2020, The Pile, §4.1) is the summed
cross-entropy in nats over predicted tokens divided by ``ln 2`` times the UTF-8 bytes those
tokens stand for. With a byte-level BPE every token is a fixed byte string, so the byte count
of each prediction target is exact (special tokens such as EOS count 0 bytes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from pretrain.data.loader import TokenBatch
from pretrain.losses import cross_entropy_sum
from pretrain.objectives.base import IGNORE_INDEX, ModelBatch


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    objective: Callable[[TokenBatch], ModelBatch],
    batches: Iterable[TokenBatch],
    token_bytes: torch.Tensor | None,
    device: torch.device,
    max_batches: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Average loss over every label token of (up to ``max_batches``) ``batches``."""
    was_training = model.training
    model.eval()
    nats, tokens, num_bytes = 0.0, 0, 0
    # Objectives that corrupt their input (MLM) draw the same corruption at every evaluation,
    # so evaluations at different steps compare like with like.
    generator = torch.Generator().manual_seed(0)
    for i, token_batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = objective(token_batch, generator).to(device)
        with autocast():
            hidden = model(batch)
        _, count, ce = cross_entropy_sum(
            hidden,
            batch.labels,
            model.output_weight,
            output_bias=getattr(model, "output_bias", None),
        )
        nats += float(ce)
        tokens += int(count)
        if token_bytes is not None:
            labels = batch.labels[batch.labels != IGNORE_INDEX]
            num_bytes += int(token_bytes.to(labels.device)[labels].sum())
    model.train(was_training)
    if tokens == 0:
        raise ValueError("evaluation saw no label tokens (is the val split empty?)")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nats / math.log(2) / num_bytes if num_bytes else None,
        "tokens": tokens,
        "bytes": num_bytes,
    }
