"""What a compiled training step keeps for the backward, measured without running it.

    python bench/saved_activations.py --objective plm --attention-backend flex
    python bench/saved_activations.py --objective plm --attention-backend flex \\
        --position-encoding rope --memory-budget 0.8 --top 15

Builds our model of ``bench_train_gpu.py``'s shape on the CPU, compiles its whole forward
(``train.compile_scope=model``; block by block, each block's graph is partitioned on its own,
which this does not trace) under bf16 autocast and lists what the partitioned forward graph
returns
(:func:`pretrain.train.activation_memory.saved_for_backward`): the bytes by producing op and
the largest tensors. No kernel runs, so a base-size model at 32 x 512 takes seconds.

FlexAttention's backward is CUDA-only and PyTorch refuses to trace it with CPU tensors; the
script lifts that check, since nothing is executed. CPU autocast rules and the partitioner may
differ a little from CUDA's: an estimate, to check against ``bench_train_gpu.py``'s peak
memory (xlnet-base txl + flex at 57ea9b8: 11.17 GiB here, 12.9 GiB above the start on an H100,
optimizer state and gradients included).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch._functorch.config as functorch_config

from bench_train_gpu import build_models, make_batches, parse_args
from pretrain.train.activation_memory import saved_for_backward


def main() -> None:
    def own_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--top", type=int, default=10, help="largest tensors to list")

    args = parse_args(own_options)
    functorch_config.activation_memory_budget = args.memory_budget
    from torch.nn.attention import flex_attention

    flex_attention._validate_device = lambda *_: None  # traced only: nothing runs
    ours, _hf, objective = build_models(args, torch.device("cpu"))
    batch = make_batches(objective, args, "cpu", count=1)[0]

    def forward(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(batch)

    saved = saved_for_backward(forward, batch)
    by_op: dict[str, int] = defaultdict(int)
    for t in saved:
        by_op[t.op] += t.nbytes
    total = sum(t.nbytes for t in saved)
    print(
        f"{args.objective} {args.size}, batch {args.batch} x {args.seq_len}, "
        f"memory budget {args.memory_budget}: the forward graph returns {len(saved)} "
        f"tensors, {total / 2**30:.2f} GiB (the model's output included)\n"
    )
    print("| producing op | GiB |\n|---|---:|")
    for op, size in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"| `{op}` | {size / 2**30:.3f} |")
    print("\n| tensor | op | shape | MiB |\n|---|---|---|---:|")
    for t in sorted(saved, key=lambda t: -t.nbytes)[: args.top]:
        print(f"| {t.name} | `{t.op}` | {t.shape} | {t.nbytes / 2**20:.1f} |")


if __name__ == "__main__":
    main()
