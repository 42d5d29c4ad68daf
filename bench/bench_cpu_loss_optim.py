"""Two CPU costs outside the model: the chunked loss by chunk size, and one AdamW step.

``pretrain.losses.cross_entropy_sum`` projects label rows onto the vocabulary in chunks. On a
CPU a chunk's fp32 logits above glibc's mmap threshold (32 MiB at most) come as fresh pages
every call, so the chunk size matters most for large vocabularies. This times the loss
(forward and gradients, bf16 projection as the trainer runs it under bf16) at several chunk
sizes, with page faults per call, and prints the default chunk size for the vocabulary. Then
it times one AdamW step over parameters of the same shapes as the model's, for-loop,
``foreach`` and fused, as ``pretrain.optim.build_optimizer`` now picks fused on a CPU.

Run from the repository root (defaults: T5 ``tiny``'s span-corruption batch, 8 x 58 targets,
d_model 192, vocabulary 32128)::

    python bench/bench_cpu_loss_optim.py [--rows 464 --d-model 192 --vocab 32128]
        [--chunks 512,256,128] [--params 15.9]

A benchmark, not a test: it prints medians and never fails on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from machine import (
    add_malloc_flag,
    cpu_model,
    git_commit,
    minor_page_faults,
    tune_malloc_as_the_trainer,
)
from pretrain.losses import cross_entropy_sum, default_chunk_rows


def median_ms_and_faults(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    times, faults = [], minor_page_faults()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), (minor_page_faults() - faults) / repeats


def time_loss(rows: int, d_model: int, vocab: int, chunks: list[int], repeats: int) -> None:
    hidden = torch.randn(rows, d_model, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, d_model)).requires_grad_()
    labels = torch.randint(0, vocab, (rows,))
    default = default_chunk_rows(torch.device("cpu"), vocab)
    print(f"loss: {rows} rows x d_model {d_model} x vocab {vocab}, bf16 projection")
    print("| chunk rows | fp32 logits per chunk MB | ms per call | page faults per call |")
    print("|---:|---:|---:|---:|")
    for chunk in sorted(set(chunks + [default]), reverse=True):

        def call(chunk: int = chunk) -> None:
            total, _, _ = cross_entropy_sum(
                hidden, labels, weight, compute_dtype=torch.bfloat16, chunk_rows=chunk
            )
            total.backward()
            hidden.grad = weight.grad = None

        ms, faults = median_ms_and_faults(call, repeats)
        mark = " (default)" if chunk == default else ""
        mb = min(chunk, rows) * vocab * 4 / 1e6
        print(f"| {chunk}{mark} | {mb:.1f} | {ms:.1f} | {faults:,.0f} |")


def time_adamw(d_model: int, vocab: int, params_millions: float, repeats: int) -> None:
    """Two vocab x d_model embeddings, the rest in d_model x 4 d_model matrices."""
    shapes = [(vocab, d_model)] * 2
    left = int(params_millions * 1e6) - 2 * vocab * d_model
    shapes += [(4 * d_model, d_model)] * max(0, left // (4 * d_model * d_model))
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    count = sum(p.numel() for p in params)
    print(f"\nAdamW step over {count / 1e6:.1f}M fp32 parameters in {len(params)} tensors")
    print("| kernel | ms per step |\n|---|---:|")
    for name, kwargs in (
        ("for-loop", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        opt = torch.optim.AdamW(params, lr=1e-4, **kwargs)
        ms, _ = median_ms_and_faults(opt.step, repeats)
        print(f"| {name} | {ms:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=464)
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--vocab", type=int, default=32128)
    p.add_argument("--chunks", default="512,256,128")
    p.add_argument("--params", type=float, default=15.9, help="AdamW: millions of parameters")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    add_malloc_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    malloc = tune_malloc_as_the_trainer(args)
    print(
        f"commit {git_commit()}, cpu {cpu_model()}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, malloc {malloc}\n"
    )
    chunks = [int(c) for c in args.chunks.split(",") if c]
    time_loss(args.rows, args.d_model, args.vocab, chunks, args.repeats)
    time_adamw(args.d_model, args.vocab, args.params, args.repeats)


if __name__ == "__main__":
    main()
