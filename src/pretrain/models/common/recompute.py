"""Tensors recomputed in the backward instead of kept from the forward.

Some intermediates are large and cheap to make again: XLNet's Transformer-XL position table
``(B, H, M, 2T)`` per layer is one batched matmul of the queries with the projected sinusoids,
but FlexAttention reads it as a captured buffer and so keeps it for its backward; at
xlnet-base, 32 x 512, that is 5.2 GiB of a step's 11 GiB of activations
(``bench/saved_activations.py``).

:func:`recomputed` runs a function inside ``torch.utils.checkpoint`` with a selective policy
(``CheckpointPolicy.MUST_RECOMPUTE`` for every op in it; Chen et al. 2016, "Training Deep Nets
with Sublinear Memory Cost", in PyTorch's selective form). Under ``torch.compile``,
AOTAutograd's partitioner honours the tag on each node, whoever consumes it: the backward graph
rebuilds the tensor from the function's inputs, and the forward keeps only those. Eagerly,
checkpointing only covers what the function's own ops save, so the result stays in memory
there; the gradients are the same either way.
"""

from __future__ import annotations

import functools

from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)


def _always_recompute(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_RECOMPUTE


def recomputed(fn, *args):
    """``fn(*args)``, with every tensor ``fn`` makes recomputed in the backward (compiled)."""
    context = functools.partial(create_selective_checkpoint_contexts, _always_recompute)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context)
