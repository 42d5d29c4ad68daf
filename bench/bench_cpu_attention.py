"""Causal attention on CPU, forward + backward: SDPA's kernels against the explicit-GEMM path.

``pretrain.models.common.explicit_attention`` takes over from
``F.scaled_dot_product_attention`` (what Hugging Face models call by default) for eager bf16
on CPU up to ``MAX_KEYS`` keys. This prints SDPA's default (flash) kernel, SDPA's own
explicit "math" backend and ours at a few sequence lengths with the tokens per call fixed
(B x T = 2048), in fp32 and bf16, so the threshold can be checked on a machine.

Run from the repository root::

    python bench/bench_cpu_attention.py [--threads 2] [--heads 4] [--head-dim 64]

A benchmark, not a test: it prints medians and never fails on them.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from machine import cpu_model, git_commit
from pretrain.models.common.explicit_attention import MAX_KEYS, explicit_attention


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return explicit_attention(q, k, v, is_causal=True)


def median_ms(fn, shape: tuple[int, ...], dtype: torch.dtype, reps: int) -> tuple[float, float]:
    """Median forward and backward milliseconds of ``fn`` on random q, k, v of ``shape``."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=gen).to(dtype)
    for _ in range(3):
        fn(q, k, v).backward(grad)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(q, k, v)
        t1 = time.perf_counter()
        out.backward(grad)
        times.append((t1 - t0, time.perf_counter() - t1))
    times.sort(key=sum)
    fwd, bwd = times[len(times) // 2]
    return fwd * 1e3, bwd * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--tokens", type=int, default=2048, help="B x T per call")
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"commit {git_commit()}, cpu {cpu_model()}, torch {torch.__version__}, threads "
        f"{args.threads}, heads {args.heads} x {args.head_dim}, MAX_KEYS {MAX_KEYS}"
    )
    print(
        "| dtype | B x T | SDPA fwd + bwd ms | SDPA math fwd + bwd ms | explicit fwd + bwd ms "
        "| SDPA / explicit |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        for seq in (128, 256, 512, 1024):
            shape = (args.tokens // seq, args.heads, seq, args.head_dim)
            a = median_ms(sdpa, shape, dtype, args.reps)
            m = median_ms(sdpa_math, shape, dtype, args.reps)
            b = median_ms(explicit, shape, dtype, args.reps)
            name = str(dtype).removeprefix("torch.")
            print(
                f"| {name} | {shape[0]} x {seq} | {a[0]:.1f} + {a[1]:.1f} | "
                f"{m[0]:.1f} + {m[1]:.1f} | {b[0]:.1f} + {b[1]:.1f} | {sum(a) / sum(b):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
