"""AdamW with the usual parameter groups (or Muon with AdamW: :mod:`pretrain.optim_muon`), and
learning-rate schedules as pure functions.

Weight decay applies to matrices only: norms, biases and embeddings (so also a tied output
projection) are not decayed (nanoGPT decays 2-D tensors only; OLMo 2 excludes embeddings).

Schedules, all with linear warmup over ``warmup_steps`` (step ``s`` is 0-based, the warmup
reaches the peak at ``s = warmup_steps - 1``):

- ``cosine``: cosine decay from the peak to ``min_lr_ratio * peak`` at ``max_steps`` (10% as
  in GPT-3 App. B, Llama 2 §2.2 and Chinchilla).
- ``wsd``: warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024): the peak until
  the last ``decay_fraction`` of the steps, then a ``1 - sqrt`` cooldown to
  ``min_lr_ratio * peak`` (the shape Hägele et al. found best).
- ``linear``: linear decay from the peak to ``min_lr_ratio * peak``.
- ``constant``: the peak after warmup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

Schedule = Literal["cosine", "wsd", "linear", "constant"]
SCHEDULES = ("cosine", "wsd", "linear", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed matrices, and undecayed norms, biases and embeddings."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or id(p) in embedding_params:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, by PyTorch's fused kernel where it has one.

    ``fused`` None picks the fused kernel when every parameter is floating point and on one
    device type that has it (CUDA, and the CPU since PyTorch 2.4): one pass per tensor
    instead of a dozen elementwise ops each. Hugging Face's ``Trainer`` picks it the same way
    (``adamw_torch_fused`` by default from PyTorch 2.8). On a CPU it took an AdamW step over
    15.9M parameters from 25.9 to 8.6 ms (at b29b150; ``bench/bench_cpu_loss_optim.py``,
    ``docs/benchmarks.md``); its updates equal the for-loop's to rounding
    (``tests/unit/test_optim.py``).
    """
    groups = param_groups(model, weight_decay)
    if fused is None:
        fused = fused_adamw_applies(p for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def build_training_optimizer(model: nn.Module, optim: Any) -> torch.optim.Optimizer:
    """The optimizer ``optim`` (an :class:`~pretrain.config.OptimConfig`) names:
    :func:`build_optimizer`'s AdamW, or Muon on the hidden matrices with AdamW on the rest
    (:class:`pretrain.optim_muon.MuonWithAdamW`)."""
    betas = tuple(optim.betas)
    if optim.name == "muon":
        from pretrain.optim_muon import MuonWithAdamW

        ns_dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}
        return MuonWithAdamW(
            model,
            optim.lr,
            optim.weight_decay,
            betas,
            optim.eps,
            optim.muon_momentum,
            ns_dtype[optim.muon_precision],
        )
    return build_optimizer(model, optim.lr, optim.weight_decay, betas, optim.eps)


FUSED_ADAMW_DEVICES = frozenset({"cuda", "cpu"})
"""Device types where :func:`build_optimizer` uses the fused AdamW (PyTorch has it on a few
more; these are the two this package runs and tests on)."""


def fused_adamw_applies(params: Iterable[torch.Tensor]) -> bool:
    """Whether PyTorch's fused AdamW takes ``params``: all floating point, on one device type
    that has the kernel."""
    params = list(params)
    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= FUSED_ADAMW_DEVICES
        and all(p.is_floating_point() for p in params)
    )


def skips_updates_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` can skip its update on the device: a ``found_inf`` tensor
    set on the optimizer makes PyTorch's fused kernels leave the parameters, the moments and
    the step count as they were where it holds 1. This is the contract ``torch.amp.GradScaler``
    uses (``_step_supports_amp_scaling``); the trainer uses it to skip a non-finite step
    without the host reading the loss first."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(optimizer: torch.optim.Optimizer, nonfinite: torch.Tensor) -> None:
    """``optimizer.step()``, skipped on the device where ``nonfinite`` (a float32 0-d tensor
    on the parameters' device) is 1; needs :func:`skips_updates_on_device`."""
    optimizer.found_inf = nonfinite  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def lr_at(
    step: int,
    *,
    schedule: Schedule,
    peak_lr: float,
    warmup_steps: int,
    max_steps: int,
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based: a run of ``max_steps`` steps takes
    steps ``0 .. max_steps - 1``).

    Each phase counts the step being taken (``step + 1``), as torchtitan's schedules do
    ("0-indexed step, hence + 1 adjustments"): warmup reaches ``peak_lr`` at its last step,
    every decay step lowers the rate, and the run's last step trains at exactly
    ``min_lr_ratio * peak_lr``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    min_lr = peak_lr * min_lr_ratio
    if schedule == "constant":
        return peak_lr
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * max_steps))
        decay_start = max(warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return peak_lr
        progress = min(1.0, (step + 1 - decay_start) / max(1, max_steps - decay_start))
        return min_lr + (peak_lr - min_lr) * (1.0 - math.sqrt(progress))
    progress = min(1.0, max(0.0, (step + 1 - warmup_steps) / max(1, max_steps - warmup_steps)))
    if schedule == "linear":
        return peak_lr - (peak_lr - min_lr) * progress
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
