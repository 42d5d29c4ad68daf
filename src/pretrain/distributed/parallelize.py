"""Wrap a single-device module for data parallelism: DDP or FSDP2, plus activation checkpointing.

- **DDP** (``DistributedDataParallel``): every rank holds the whole model and optimizer; the
  gradients are all-reduced (averaged) in buckets during backward.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``): each block, then the root, is sharded
  over the ranks (parameters are ``DTensor`` shards); a block's weights are all-gathered just
  before its forward and backward and freed after, gradients are reduce-scattered. With
  ``distributed.replicate_degree`` R > 1 (HSDP), consecutive ranks form shard groups of
  WORLD_SIZE / R, rank r in group r // (WORLD_SIZE / R); the gradients, reduce-scattered
  within a group, are then all-reduced across the groups. With
  ``train.precision=bf16`` the gathered weights are bf16 and gradients are reduced in fp32
  (torchtitan's ``mixed_precision_param``/``mixed_precision_reduce``).
  With ``distributed.tensor_parallel_degree`` T > 1 each block is first split over groups of
  T consecutive ranks (:mod:`pretrain.distributed.tensor_parallel`), and FSDP shards over the
  WORLD_SIZE / T data-parallel ranks (2-D, as torchtitan composes them). With
  ``distributed.context_parallel_degree`` C > 1 the ranks of a context-parallel group hold the
  same weights and DDP or FSDP spans them too (:mod:`pretrain.distributed.context_parallel`).

The wrapped module is the trainer's :class:`~pretrain.train.loss_module.ModelWithLoss`, whose
``model`` holds ``blocks`` (every family in ``pretrain.models`` does).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.config import DistributedConfig

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each of ``model.blocks`` in backward instead of storing its activations.

    The block's ``forward`` is replaced on the instance (not wrapped in a new module), so the
    state dict keys, and hence checkpoints, stay the same. Returns the number of blocks.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks to checkpoint")
    for block in blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # eval and generation keep nothing anyway
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
    return len(blocks)


def parallelize(
    module: nn.Module,
    cfg: DistributedConfig,
    device: torch.device,
    param_dtype: torch.dtype | None,
    meshes: Meshes | None = None,
) -> nn.Module:
    """Return ``module`` wrapped for ``cfg.strategy`` (``none`` returns it unchanged).

    For ``fsdp`` the parameters of ``module`` are replaced by sharded ones in place: build
    the optimizer from ``module`` *after* this call. ``meshes``: :func:`device_meshes`,
    built here when None.
    """
    if cfg.strategy == "none":
        return module
    if cfg.strategy == "ddp":  # over every rank: data and context parallel (ddp has no tp)
        return wrap_ddp(module, device)
    if cfg.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        meshes = meshes or device_meshes(device.type, cfg)
        mesh = meshes.dp
        if meshes.tp is not None:
            from pretrain.distributed.tensor_parallel import apply_tensor_parallel

            apply_tensor_parallel(module.model, meshes.tp, cfg.sequence_parallel)
        mp = MixedPrecisionPolicy()
        if param_dtype is not None:
            mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        blocks = module.model.blocks
        for i, block in enumerate(blocks):
            # The last block's weights are gathered again right away for backward.
            reshard = cfg.reshard_after_forward and i < len(blocks) - 1
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
        return module
    raise ValueError(f"distributed.strategy={cfg.strategy!r}: use none, ddp or fsdp")


def wrap_ddp(module: nn.Module, device: torch.device, process_group=None) -> nn.Module:
    """``module`` under ``DistributedDataParallel`` over ``process_group`` (default: all)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # A model whose forward leaves some parameters out (XLNet's segment terms when no
    # token types are given) says so; DDP then looks for them after each forward.
    unused = any(getattr(m, "has_unused_parameters", False) for m in module.modules())
    # Buffers (RoPE tables) are the same on every rank: no broadcast before each forward.
    # PyTorch 2.13 renamed the option and warns on the old name.
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        module,
        device_ids=ids,
        find_unused_parameters=unused,
        process_group=process_group,
        **no_sync,
    )


@dataclass(frozen=True)
class Meshes:
    """The DeviceMeshes of a run without pipeline parallelism."""

    dp: DeviceMesh  # what FSDP shards over (HSDP: 2-D), context-parallel ranks included
    tp: DeviceMesh | None  # a tensor-parallel group (None: no tensor parallelism)
    cp: DeviceMesh | None  # a context-parallel group (None: no context parallelism)


def device_meshes(device_type: str, cfg: DistributedConfig) -> Meshes:
    """The meshes of ``cfg``'s layout over every rank.

    Ranks are laid out ``(replicate, shard, cp, tp)``, tensor parallelism innermost: a group of
    ``tp`` consecutive ranks (one node's GPUs) exchanges activations every block, a
    context-parallel group keys and values; HSDP's replicas (``fully_shard`` on a 2-D mesh
    replicates along its first dimension) exchange only gradients. The context-parallel ranks
    hold the same weights, so FSDP shards over them too (``shard`` and ``cp`` flattened, as
    torchtitan's ``dp_shard_cp``).
    """
    from torch.distributed.device_mesh import init_device_mesh

    world, replicas = torch.distributed.get_world_size(), cfg.replicate_degree
    tp, cp = cfg.tensor_parallel_degree, cfg.context_parallel_degree
    shards = world // (replicas * cp * tp)
    shape, names = [shards], ["dp_shard"]
    if replicas > 1:
        shape, names = [replicas, *shape], ["dp_replicate", *names]
    if cp > 1:
        shape, names = [*shape, cp], [*names, "cp"]
    if tp > 1:
        shape, names = [*shape, tp], [*names, "tp"]
    if shape == [world]:  # plain FSDP: one dimension
        return Meshes(init_device_mesh(device_type, (world,), mesh_dim_names=("dp",)), None, None)
    mesh = init_device_mesh(device_type, tuple(shape), mesh_dim_names=tuple(names))
    dp = data_parallel_mesh(mesh, "dp_shard", replicas > 1, cp > 1)
    return Meshes(dp, mesh["tp"] if tp > 1 else None, mesh["cp"] if cp > 1 else None)


def data_parallel_mesh(
    mesh: DeviceMesh, shard_dim: str, replicated: bool, context: bool
) -> DeviceMesh:
    """The part of ``mesh`` whose ranks hold the same weights, which DDP or FSDP spans: the
    ``shard_dim`` ranks, flattened with the context-parallel ``cp`` ones when ``context``,
    and behind ``dp_replicate`` when ``replicated`` (HSDP: 2-D)."""
    shard = shard_dim
    if context:
        shard = mesh[shard_dim, "cp"]._flatten(f"{shard_dim}_cp").mesh_dim_names[0]
    return mesh["dp_replicate", shard] if replicated else mesh[shard]


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Synchronize gradients in this backward only if ``enabled`` (the last micro-batch).

    DDP's ``no_sync`` and FSDP2's ``set_requires_gradient_sync(False)`` let the micro-batches
    before the last accumulate locally, so a step communicates its gradients once.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel) and not enabled:
        with module.no_sync():
            yield
    elif is_fsdp(module):
        module.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


@contextlib.contextmanager
def gathered(*modules: nn.Module) -> Iterator[None]:
    """Full (unsharded) root weights outside the training forward: evaluation and sampling.

    FSDP2 gathers a wrapped module's weights only inside its forward; the trainer evaluates
    through the bare model, so the roots' own weights (embeddings, output head, final norm;
    one root a pipeline stage) are gathered here for the duration; the blocks gather their
    own in their forward. Every rank must enter it (it is a collective). Modules FSDP does
    not wrap are left as they are.
    """
    roots = [m for m in modules if is_fsdp(m)]
    for root in roots:
        root.unshard()
    try:
        yield
    finally:
        for root in roots:
            root.reshard()
