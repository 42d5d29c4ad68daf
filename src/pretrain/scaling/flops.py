"""Training FLOPs per token, per step and per run, and model FLOPs utilization (MFU).

PaLM (Chowdhery et al. 2022, App. B): ``flops_per_token = 6 N + 12 L H Q T`` with N the
parameters used in matmuls, L layers, H heads, Q head dimension, T sequence length; the second
term is attention's score and value matmuls (forward + backward) over the full T x T square.
Kaplan et al. (2020, Table 1) count ``2 L T d_attn`` per forward token for attention, i.e.
``6 L H Q T`` for training: the causal half of PaLM's term. GPT-3 (Brown et al. 2020, App. D)
and Chinchilla's ``C = 6 N D`` drop the attention term. MFU is achieved tokens/s times the
FLOPs per token, over the device's peak dense bf16 FLOP/s (nanoGPT ``estimate_mfu``,
torchtitan ``get_peak_flops``).
"""

from __future__ import annotations

from typing import Literal

import torch

# Dense bf16 peak FLOP/s (torchtitan get_peak_flops; NVIDIA whitepapers). Dense, not the 2:4
# sparse figure some pages print (H100/H200 "1,979").
PEAK_BF16_FLOPS = {
    "A100": 312e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
}

# One petaflop/s-day (Kaplan et al. 2020, §1.3): 1e15 * 24 * 3600.
PF_DAY = 8.64e19

Attention = Literal["palm", "kaplan", "none"]
ATTENTION_CONVENTIONS = ("palm", "kaplan", "none")
_ATTENTION_FACTOR = {"palm": 12.0, "kaplan": 6.0, "none": 0.0}


def attention_factor(attention: Attention) -> float:
    """FLOPs per query, key and head dimension of attention's two products, forward and
    backward: 12 (``palm``), 6 (``kaplan``) or 0 (``none``).

    Raises:
        ValueError: for an unknown convention.
    """
    if attention not in _ATTENTION_FACTOR:
        raise ValueError(f"attention: unknown {attention!r}; valid: {ATTENTION_CONVENTIONS}")
    return _ATTENTION_FACTOR[attention]


def formula(attention: Attention) -> str:
    """:func:`flops_per_token`'s count as text, ``6N + 12LHQT``, ``6N + 6LHQT`` or ``6N``, from
    the same factors, so a label cannot drift from the number it labels."""
    factor = attention_factor(attention)
    return f"6N + {factor:g}LHQT" if factor else "6N"


def flops_per_token(
    num_matmul_params: int,
    n_layers: int,
    n_heads: int,
    head_dim: int,
    seq_len: int,
    attention: Attention = "palm",
) -> float:
    """Training FLOPs per token: ``6 N + k L H Q T``.

    ``attention`` picks k: ``palm`` 12 (full T x T square, as PaLM, Chinchilla App. F,
    nanoGPT and torchtitan count), ``kaplan`` 6 (the causal half, Kaplan Table 1), ``none`` 0
    (GPT-3 App. D's and Chinchilla's 6N).
    """
    factor = attention_factor(attention)
    return 6.0 * num_matmul_params + factor * n_layers * n_heads * head_dim * seq_len


def training_flops(num_params: float, num_tokens: float) -> float:
    """``C = 6 N D`` (Kaplan §2.1; GPT-3 App. D; Chinchilla eq. 4's constraint)."""
    return 6.0 * num_params * num_tokens


def _lookup_peak(name: str) -> float | None:
    """Peak of the longest ``PEAK_BF16_FLOPS`` key within ``name`` (case-insensitive, with ``-``
    and ``_`` read as spaces), so ``"NVIDIA H100 PCIe"`` is an H100 PCIe, not an H100; None if
    no key is."""
    text = name.strip().lower().replace("-", " ").replace("_", " ")
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # most specific first
        if key.lower() in text:
            return PEAK_BF16_FLOPS[key]
    return None


def gpu_peak_flops(gpu: str | float) -> float:
    """Peak dense bf16 FLOP/s of a named GPU (``A100``, ``H100``, ``H200``, ...) or a number.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return float(gpu)
    except ValueError:
        pass
    peak = _lookup_peak(gpu)
    if peak is None:
        raise ValueError(
            f"unknown GPU {gpu!r}; known: {', '.join(PEAK_BF16_FLOPS)}"
            " (or give FLOP/s, e.g. 989e12)"
        )
    return peak


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops_per_second: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over peak (PaLM App. B).

    ``tokens_per_second`` and ``peak_flops_per_second`` must cover the same devices (per device,
    as torchtitan, or both summed over all of them).
    """
    return tokens_per_second * flops_per_token / peak_flops_per_second


def wall_seconds(
    total_flops: float, peak_flops_per_second: float, mfu: float, num_devices: int = 1
) -> float:
    """Seconds to spend ``total_flops`` on ``num_devices`` running at ``mfu`` of their peak."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be at least 1, got {num_devices}")
    return total_flops / (peak_flops_per_second * mfu * num_devices)


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device, or None where unknown (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    return _lookup_peak(torch.cuda.get_device_name(device))
