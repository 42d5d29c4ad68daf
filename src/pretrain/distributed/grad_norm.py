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
    groups: dict[object, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    if len(groups) <= 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    from torch.distributed.tensor.experimental import implicit_replication

    from pretrain.distributed.tensor_parallel import quiet_redistribution

    norms = []
    with quiet_redistribution():
        for group in groups.values():
            norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    total = torch.linalg.vector_norm(torch.stack(norms))
    with implicit_replication():  # the plain factor multiplies every mesh's DTensors
        for group in groups.values():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
