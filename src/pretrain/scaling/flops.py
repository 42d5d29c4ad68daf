"""Training FLOPs per token and model FLOPs utilization (MFU).

PaLM (Chowdhery et al. 2022, App. B): ``flops_per_token = 6 N + 12 L H Q T`` with N the
parameters used in matmuls, L layers, H heads, Q head dimension, T sequence length; the second
term is attention's score and value matmuls (forward + backward). MFU is achieved tokens/s
times that, over the device's peak dense bf16 FLOP/s (nanoGPT ``estimate_mfu``, torchtitan).
"""

from __future__ import annotations

import torch

# Dense bf16 peak FLOP/s (torchtitan get_peak_flops; NVIDIA whitepapers).
PEAK_BF16_FLOPS = {
    "A100": 312e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
}


def flops_per_token(
    num_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int
) -> float:
    """``6 N + 12 L H Q T`` training FLOPs per token."""
    return 6.0 * num_matmul_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device, or None where unknown (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # most specific first
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None
