"""Gradient clipping by the global norm when parameters live on different device meshes.

Under tensor parallelism a block's weights are DTensors on the (data-parallel x
tensor-parallel) mesh while the embeddings, norms and output head, replicated across each
tensor-parallel group, are sharded on the data-parallel mesh only; PyTorch's
``clip_grad_norm_`` computes one norm over all of them and cannot mix meshes. Here each mesh's
gradients get their norm (a DTensor norm reduces over its own mesh: a replicated copy counts
once), the norms are combined as ``sqrt(sum of squares)``, and every gradient is scaled by the
one clipping factor (Pascanu et al. 2013: the gradient's direction is kept).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their total 2-norm is at most ``max_norm``; return the
    norm before clipping (a plain tensor when meshes are mixed, else as ``clip_grad_norm_``)."""
    params = [p for p in parameters if p.grad is not None]
    if len(_by_mesh(params)) <= 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = total_norm(params)
    clip_to_norm(params, max_norm, total)
    return total


def _by_mesh(params: list[torch.nn.Parameter]) -> dict[object, list[torch.nn.Parameter]]:
    groups: dict[object, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    return groups


def total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The 2-norm of the gradients of ``params`` (with a gradient), on any mix of meshes, as a
    plain tensor: a DTensor's counts over its own mesh, a replicated copy once."""
    from pretrain.distributed.tensor_parallel import quiet_redistribution

    norms = []
    with quiet_redistribution():
        for group in _by_mesh([p for p in params if p.grad is not None]).values():
            norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_to_norm(params: list[torch.nn.Parameter], max_norm: float, total: torch.Tensor) -> None:
    """Scale the gradients of ``params`` by ``max_norm / total`` where that is below 1."""
    from torch.distributed.tensor.experimental import implicit_replication

    with implicit_replication():  # the plain factor multiplies every mesh's DTensors
        for group in _by_mesh([p for p in params if p.grad is not None]).values():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
