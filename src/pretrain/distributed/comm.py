"""The few collectives the trainer needs, each a no-op in a single process."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    return dist.get_rank() if active() else 0


def all_reduce_sum(value: torch.Tensor | float | int, device: torch.device) -> torch.Tensor:
    """Sum of ``value`` over all ranks, as a float64 tensor on ``device`` (exact for counts).

    A number becomes a tensor by a fill on ``device``, not a copy from the host, which on
    CUDA would wait for the work already queued there.
    """
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device=device, dtype=torch.float64).clone()
    else:
        t = torch.full((), value, dtype=torch.float64, device=device)
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if active():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (small picklable objects only)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` came from a collective whose peers died or timed out."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    markers = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe")
    return isinstance(error, RuntimeError) and active() and any(m in text for m in markers)
