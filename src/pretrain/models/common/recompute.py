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

import torch
from torch.utils.checkpoint import checkpoint


def recomputed(fn, *args):
    """``fn(*args)``, with every tensor ``fn`` makes recomputed in the backward (compiled)."""
    return checkpoint(fn, *args, use_reentrant=False)


def recomputed_when_compiled(fn, *args):
    """:func:`recomputed` while ``torch.compile`` traces, a plain ``fn(*args)`` eagerly (where
    checkpointing would not free the result and would cost a second pass in the backward).

    For the MLPs' activations: the down projection needs ``act(h)`` for its weight gradient
    and the activation's backward needs ``h``, so the partitioner kept both (the two largest
    tensors of each layer, ``(B*T, d_ff)``). Recomputing ``act(h)`` from ``h`` is one
    pointwise pass in the backward. What the compiled step keeps (``bench/saved_activations.py``,
    ``docs/benchmarks.md``, "Activation memory"): xlnet-base rope 32 x 512 5.98 -> 4.76 GiB,
    gpt2-small 16 x 1024 5.61 -> 4.48, bert-base 5.66 -> 4.53, t5-v1_1-base 13.32 -> 12.40.
    """
    if torch.compiler.is_compiling():
        return recomputed(fn, *args)
    return fn(*args)
