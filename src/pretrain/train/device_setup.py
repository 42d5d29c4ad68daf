"""Where a run computes: its device, its process group and its autocast dtype."""

from __future__ import annotations

import contextlib

import torch

from pretrain.config import ExperimentConfig
from pretrain.distributed.env import DistEnv, init_distributed
from pretrain.distributed.launch import env_world
from pretrain.train.errors import TrainingError


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA where there is one; ``cuda`` is the process's GPU
    (``LOCAL_RANK``: one GPU per process under ``torchrun``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name!r} but no CUDA device is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env_world()[1])
    return device


def refuse_flex_off_cuda(attention_backend: str, device: torch.device) -> None:
    """``model.attention_backend=flex`` trains on CUDA only: PyTorch has no FlexAttention
    backward elsewhere."""
    if attention_backend == "flex" and device.type != "cuda":
        raise TrainingError(
            "model.attention_backend=flex trains on CUDA only (PyTorch has no "
            f"FlexAttention backward on {device.type}); use --model.attention_backend=sdpa"
        )


def start_distributed(cfg: ExperimentConfig, device: torch.device) -> DistEnv:
    """Join the process group ``torchrun`` describes (or none), as a :class:`TrainingError`
    that says what to check when it cannot form."""
    try:
        return init_distributed(cfg.distributed, device)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    except RuntimeError as e:  # e.g. DistStoreError: a peer never joined
        rank, _, world = env_world()
        raise TrainingError(
            f"rank {rank}: the process group of {world} ranks did not form within "
            f"distributed.timeout_seconds={cfg.distributed.timeout_seconds:g}; check that "
            "every rank was launched and reaches MASTER_ADDR:MASTER_PORT. Cause: "
            f"{str(e).splitlines()[0][:300]}"
        ) from e


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``train.precision``: bf16 autocast with fp32 weights, or None for fp32; ``auto`` is
    bf16 on CUDA only."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
