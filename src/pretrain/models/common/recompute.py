"""Tensors recomputed in the backward instead of kept from the forward.

Some intermediates are large and cheap to make again: XLNet's Transformer-XL position table
``(B, H, M, 2T)`` per layer is one batched matmul of the queries with the projected sinusoids,
but FlexAttention reads it as a captured buffer and so keeps it for its backward; at
xlnet-base, 32 x 512, that is 4.9 GiB of the 11.2 GiB a compiled step keeps
(``bench/saved_activations.py``).

:func:`recomputed` runs a function inside ``torch.utils.checkpoint`` (Chen et al. 2016,
"Training Deep Nets with Sublinear Memory Cost"). Under ``torch.compile``, Dynamo tags every
node of a checkpointed region ``PREFER_RECOMPUTE`` and AOTAutograd's partitioner honours the
tag whoever consumes the node: the backward graph rebuilds the tensor from the function's
inputs, and the forward keeps only those. Eagerly, checkpointing only covers what the
function's own ops save, so the result stays in memory there; the gradients are the same
either way.
"""

from __future__ import annotations

from torch.utils.checkpoint import checkpoint


def recomputed(fn, *args):
    """``fn(*args)``, with every tensor ``fn`` makes recomputed in the backward (compiled)."""
    return checkpoint(fn, *args, use_reentrant=False)
