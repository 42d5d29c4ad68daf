"""Whether this CPU computes bf16 natively, so bf16 autocast speeds training up.

With AVX512-BF16 or AMX (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on) oneDNN
multiplies bf16 matrices in hardware: on the `tiny` decoder (AMD EPYC with AVX512-BF16,
2 threads) a bf16 step ran at 8,776 tokens/s against 4,554 in fp32 (bench/bench_train_cpu.py,
docs/benchmarks.md). Without them bf16 is emulated through fp32 and no faster. Arm CPUs are
not probed (PyTorch exposes no such check for them) and count as not native.
"""

from __future__ import annotations

import logging
import platform

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True on an x86 CPU with AVX512-BF16 or AMX tiles, as PyTorch detects them."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def warn_if_bf16_is_emulated(
    device: torch.device, autocast_dtype: torch.dtype | None, setting: str = "train.precision"
) -> bool:
    """Log a warning when bf16 autocast was asked for on a CPU without native bf16
    (``setting``: the option that asked, as the user writes it).

    Returns True when it warned.
    """
    if device.type != "cpu" or autocast_dtype != torch.bfloat16 or cpu_has_native_bf16():
        return False
    log.warning(
        "%s=bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated here and is likely no "
        "faster than --%s=fp32",
        setting,
        setting,
    )
    return True
