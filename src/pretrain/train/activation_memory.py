"""What a compiled step keeps from its forward for its backward, found without running it.

The activation memory of a compiled training step is whatever AOTAutograd's partitioner hands
from the forward graph to the backward graph. :func:`saved_for_backward` compiles a function
with the partitioner Inductor uses (``min_cut_rematerialization_partition``), records the
tensors the partitioned forward graph returns, and stops there: no kernel runs, so a base-size
model at a full batch is measured in seconds on a CPU. ``bench/saved_activations.py`` prints
it for the benchmark's models; the tests use it to check what is recomputed.

Under a memory budget (``train.activation_memory_budget``, applied by the trainer with
``torch._functorch.config.patch`` around the compiled forward) AOTAutograd keeps at most that
share of the activations and recomputes the cheapest others in the backward. At xlnet-base,
32 x 512, a budget of 0.8 takes what the forward keeps from 6.3 to 3.2 GiB (txl) and from 6.0
to 3.2 GiB (RoPE), with the same matmuls: the partitioner recomputes pointwise work (GELU,
norms, casts).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SavedTensor:
    """One tensor the forward graph returns: the user's outputs or a saved activation."""

    name: str  # the graph node's name
    op: str  # the op that makes it ("placeholder" for a graph input)
    shape: tuple[int, ...]
    nbytes: int


class _Partitioned(Exception):
    """Raised by the recording compiler once the forward graph is known."""


def _chain(error: BaseException | None):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def saved_for_backward(fn, *args) -> list[SavedTensor]:
    """The tensors the partitioned forward graph of ``torch.compile(fn)(*args)`` returns:
    ``fn``'s outputs and what the backward reads. At least one input or parameter must need
    gradients; ``fn`` must compile to one graph (a graph break stops at the first). Dynamo's
    caches are reset before and after, so run it apart from compiled training."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    found: list[SavedTensor] = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        output = next(n for n in gm.graph.nodes if n.op == "output")
        for node in output.args[0]:
            value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
            if isinstance(value, torch.Tensor):
                op = str(node.target) if node.op == "call_function" else node.op
                size = value.numel() * value.element_size()
                found.append(SavedTensor(node.name, op, tuple(value.shape), size))
        raise _Partitioned

    partition = functools.partial(min_cut_rematerialization_partition, compiler="inductor")
    backend = aot_autograd(fw_compiler=record, bw_compiler=record, partition_fn=partition)
    torch._dynamo.reset()
    try:
        torch.compile(fn, backend=backend)(*args)
    except Exception as error:  # Dynamo wraps what the backend raises
        if not any(isinstance(e, _Partitioned) for e in _chain(error)):
            raise
    finally:
        torch._dynamo.reset()
    return found
