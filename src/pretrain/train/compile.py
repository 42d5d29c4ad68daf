"""How a model is compiled for training: each block on its own, or the whole forward at once.

``train.compile_scope``:

- ``blocks`` (default): regional compilation, as torchtitan compiles each transformer block
  (PyTorch's "regional compilation" recipe). Every block of a stack runs the same
  ``forward``, and Dynamo passes a block's parameters to the compiled graph as inputs
  rather than baking them in as constants, so one trace, one AOTAutograd partition and one
  Inductor build serve every block of that stack. Compile time stays that of a single block
  at any depth. Measured on 2 CPU cores (``docs/benchmarks.md``), the first training step
  of gpt2-small takes 16.6 s instead of 31.7 s, of t5-v1_1-base 30.5 s instead of 76.9 s.
  The embedding, the final norm and what runs between blocks (masks, position tables) stay
  eager.
- ``model``: one graph for the whole forward, which leaves Inductor free to fuse across
  block boundaries (the residual add of one block with the norm of the next, for example).

The blocks are compiled in place (``nn.Module.compile``), so state dict keys do not change
and every caller of the model runs the compiled blocks. Token-by-token sampling
(:func:`pretrain.generate.generate`) runs them eager, because its shapes change at every
step.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import torch
from torch import nn

from pretrain.config import ConfigError, TrainConfig
from pretrain.objectives.base import ModelBatch

COMPILE_SCOPES = typing.get_args(typing.get_type_hints(TrainConfig)["compile_scope"])
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
"""``torch.compile`` modes that replay compiled graphs as CUDA graphs."""


def refuse_cuda_graphs_with_accumulation(mode: str, device_type: str, grad_accum: int) -> None:
    """Raise where CUDA graphs would replay more than one micro-batch a step: CUDA graph trees
    hand out a micro-batch's parameter gradients in graph memory that the next replay
    overwrites (pytorch/pytorch#169545, #96693), so accumulated gradients would be wrong.

    Raises:
        ConfigError: naming ``train.compile_mode`` and what to change.
    """
    if mode in CUDA_GRAPH_MODES and device_type == "cuda" and grad_accum > 1:
        raise ConfigError(
            f"train.compile_mode={mode} replays CUDA graphs, which do not accumulate gradients "
            f"over micro-batches ({grad_accum} a step here): make train.micro_batch_size x "
            "ranks x train.seq_len equal train.tokens_per_batch, or set "
            "train.compile_mode=default"
        )


def compile_for_training(
    model: nn.Module, scope: str = "blocks", mode: str | None = None, backend: str = "inductor"
) -> Callable[[ModelBatch], torch.Tensor]:
    """What the training step calls in place of ``model``.

    Args:
        model: a model from :mod:`pretrain.models`; each holds its repeated layers in
            ``model.blocks`` (T5: encoder blocks, then decoder blocks).
        scope: ``blocks`` compiles each of ``model.blocks`` in place and returns ``model``;
            ``model`` returns ``torch.compile(model)`` and leaves ``model`` itself eager.
        mode: ``torch.compile`` mode (None: the default).
        backend: ``torch.compile`` backend (``aot_eager`` traces without generating code).

    Raises:
        ValueError: for an unknown scope, or ``blocks`` on a model without ``blocks``.
    """
    if scope == "model":
        return torch.compile(model, mode=mode, backend=backend)
    if scope != "blocks":
        raise ValueError(f"train.compile_scope={scope!r}: choose one of {COMPILE_SCOPES}")
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"train.compile_scope=blocks: {type(model).__name__} has no .blocks list; "
            "use train.compile_scope=model"
        )
    for block in blocks:
        block.compile(mode=mode, backend=backend)
    return model


def training_forward(
    model: nn.Module, train: TrainConfig, device: torch.device
) -> tuple[Callable[[ModelBatch], torch.Tensor], bool]:
    """The forward the training step runs, as ``train`` configures it, and whether each step
    must call ``torch.compiler.cudagraph_mark_step_begin`` (CUDA graphs replay into the same
    output memory, so each step has to say it is a new one).

    ``train.compile`` compiles it (:func:`compile_for_training`, ``train.compile_mode``);
    ``train.activation_memory_budget`` below 1 has AOTAutograd keep only that share of the
    activations and recompute the rest, when it compiles."""
    import torch._functorch.config as functorch_config

    forward: Callable[[ModelBatch], torch.Tensor] = model
    if train.compile:
        mode = None if train.compile_mode == "default" else train.compile_mode
        forward = compile_for_training(model, train.compile_scope, mode)
    if train.activation_memory_budget < 1:
        budget = functorch_config.patch(activation_memory_budget=train.activation_memory_budget)
        forward = budget(forward)
    marks_steps = train.compile and train.compile_mode in CUDA_GRAPH_MODES
    return forward, marks_steps and device.type == "cuda"
