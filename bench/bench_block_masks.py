"""Host time of building FlexAttention block masks: ``create_block_mask`` against ours.

The models build their ``BlockMask`` eagerly at every forward. Each case is one mask of a GPU
reference shape, built by PyTorch's ``create_block_mask`` (vmap) and by
``pretrain.models.common.flex_block_mask.build_block_mask`` (broadcasting), in the same run:

- ``ms``: median wall time of one build. On a GPU this is the host's time (the kernels are
  queued, not waited for); ``--sync`` adds a synchronize and so the device's time too. On a
  CPU the arithmetic is in it: the 1 x 128 x 128 case, whose arithmetic is negligible, shows
  the host's own cost.
- ``ops``: aten operators dispatched by one build (on a GPU, about the kernels launched, views
  included), counted with a ``TorchDispatchMode``.

A benchmark, not a test (``tests/unit/test_flex_block_mask.py`` checks the two agree).

    python bench/bench_block_masks.py [--device cuda] [--threads 1] [--repeats 20] [--sync]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask
from torch.utils._python_dispatch import TorchDispatchMode

from machine import cpu_model, git_commit
from pretrain.models.common.flex_block_mask import build_block_mask


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def cases(device: torch.device) -> dict:
    """name -> (mask_mod, B, Q, KV): the rules the models build, at the benchmarks' shapes."""
    gen = torch.Generator().manual_seed(0)
    B, T, M = 32, 512, 85
    rank = torch.stack([torch.randperm(T, generator=gen) for _ in range(B)]) - (T - M)
    rank = rank.clamp(min=-1)
    layout = torch.sort(rank, dim=1, stable=True).indices
    k_rank = rank.gather(1, layout).to(device)
    rows = torch.sort(rank, dim=1, descending=True).indices[:, :M]
    row_rank = rank.gather(1, rows).to(device)
    valid = torch.ones(B, M, dtype=torch.bool, device=device)
    keys = torch.ones(B, T, dtype=torch.bool, device=device)
    docs = (torch.rand(16, 1024, generator=gen) < 0.004).long().cumsum(1).to(device)
    tiny = k_rank[:1, :128].argsort(dim=1)  # a permutation of 128 positions, one row

    def xlnet_content(b, h, q, kv):
        return (q == kv) | (k_rank[b, q] > k_rank[b, kv])

    def xlnet_query(b, h, q, kv):
        return ~valid[b, q] | (row_rank[b, q] > k_rank[b, kv])

    def xlnet_tiny(b, h, q, kv):
        return (q == kv) | (tiny[b, q] > tiny[b, kv])

    def t5_encoder(b, h, q, kv):
        return (q >= 0) & keys[b, kv]

    def t5_decoder(b, h, q, kv):
        return kv <= q

    def t5_cross(b, h, q, kv):
        return keys[b, kv]

    def decoder_documents(b, h, q, kv):
        return (kv <= q) & (docs[b, q] == docs[b, kv])

    return {
        "xlnet content 1x128x128 (overhead)": (xlnet_tiny, 1, 128, 128),
        "xlnet content 32x512x512": (xlnet_content, B, T, T),
        "xlnet query 32x85x512": (xlnet_query, B, M, T),
        "t5 encoder pad keys 32x512x512": (t5_encoder, B, T, T),
        "t5 decoder causal 114x114": (t5_decoder, None, 114, 114),
        "t5 cross pad keys 32x114x512": (t5_cross, B, 114, T),
        "decoder documents 16x1024x1024": (decoder_documents, 16, 1024, 1024),
    }


def time_build(build, device: torch.device, repeats: int, sync: bool) -> float:
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        build()
        if sync and device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


def count_ops(build) -> int:
    with CountOps() as counter:
        build()
    return counter.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sync", action="store_true", help="wait for the device after each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# commit {git_commit()}, torch {torch.__version__}, {cpu_model()}, "
          f"device {device}, {args.threads} thread(s), median of {args.repeats}")  # fmt: skip
    print(f"{'mask':34s} {'torch ms':>9s} {'ours ms':>9s} {'ratio':>6s} "
          f"{'torch ops':>9s} {'ours ops':>8s}")  # fmt: skip
    for name, (mod, B, Q, KV) in cases(device).items():
        builders = {
            "torch": functools.partial(create_block_mask, mod, B, None, Q, KV, device=device),
            "ours": functools.partial(build_block_mask, mod, B, Q, KV, device),
        }
        ms = {k: time_build(f, device, args.repeats, args.sync) for k, f in builders.items()}
        ops = {k: count_ops(f) for k, f in builders.items()}
        ratio = ms["torch"] / ms["ours"]
        print(f"{name:34s} {ms['torch']:9.2f} {ms['ours']:9.2f} {ratio:6.1f} "
              f"{ops['torch']:9d} {ops['ours']:8d}")  # fmt: skip
        print(json.dumps({"mask": name, "ms": ms, "ops": ops, "device": str(device)}))


if __name__ == "__main__":
    main()
