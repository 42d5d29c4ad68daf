"""Packed-batch throughput of ``pretrain.data.loader.TokenLoader`` on one CPU core.

Measures tokens per second (tokens = ``batch.tokens.numel()``, i.e. ``batch * (seq_len + 1)``
per batch) of batches drawn from a shard directory for ``--seconds`` each, in three settings:
one source with shuffling on, one source read in order (shuffle off), and a blend of two
sources with weights 0.7/0.3 (the same directory twice, shuffle on). The process is pinned to
one core (``os.sched_setaffinity(0, {0})`` where available, ``torch.set_num_threads(1)``);
opening the loader (manifest, sha256 of every shard) is timed apart and not counted. Target:
at least 5 million tokens/s per setting.

Shards: ``--shards DIR`` (default ``bench/out/shards``, written by
``bench/bench_tokenize.py``). When that holds no manifest, a small directory is built from
``CORPORA/books.jsonl.gz`` into ``bench/out/loader_shards`` (training a small tokenizer into
``bench/out/loader_tokenizer`` if needed).

Run from the repository root::

    python bench/bench_loader.py [--shards DIR] [--seq-len 1024] [--batch 16] [--seconds 5]

This is a benchmark, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

from machine import busy_cpu_seconds, cpu_model, git_commit

TARGET_TOKENS_PER_S = 5e6
NOISE_CORES = 0.10  # other processes busier than this during a run: warn


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pin_to_one_core() -> str:
    import torch

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}, torch threads {torch.get_num_threads()}"
    return f"not pinned (no sched_setaffinity), torch threads {torch.get_num_threads()}"


def build_small_shards(corpora: Path, out_dir: Path) -> Path | None:
    """Tokenize books.jsonl.gz into ``out_dir/loader_shards``; ``None`` if it is missing."""
    from pretrain.data.shards import MANIFEST_FILE
    from pretrain.data.tokenize import tokenize_to_shards
    from pretrain.tokenizer import TOKENIZER_FILE, train_tokenizer_from_files

    books = corpora / "books.jsonl.gz"
    if not books.exists():
        return None
    shards = out_dir / "loader_shards"
    if (shards / MANIFEST_FILE).exists():
        return shards
    tok_dir = out_dir / "tokenizer"
    if not (tok_dir / TOKENIZER_FILE).exists():
        tok_dir = out_dir / "loader_tokenizer"
        if not (tok_dir / TOKENIZER_FILE).exists():
            print(f"building shards: training a 4096-entry tokenizer on {books} ...", flush=True)
            tokenizer, _ = train_tokenizer_from_files([str(books)], 4096)
            tokenizer.save(tok_dir)
    print(f"building shards: tokenizing {books} into {shards} ...", flush=True)
    tokenize_to_shards(tok_dir, [str(books)], shards, val_fraction=0.0, workers=1, overwrite=True)
    return shards


def measure(loader, seconds: float, warmup: int = 3) -> tuple[float, int, int]:
    """Return (tokens/s, batches, tokens) over about ``seconds`` of ``next(loader)``."""
    for _ in range(warmup):
        next(loader)
    tokens = 0
    batches = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        batch = next(loader)
        tokens += batch.tokens.numel()
        batches += 1
        now = time.perf_counter()
    return tokens / (now - start), batches, tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--shards", default="bench/out/shards", help="a token shard directory")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16, help="windows per batch")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per setting")
    p.add_argument("--corpora", default="../shared/corpora", help="for the fallback shards")
    p.add_argument("--out-dir", default="bench/out", help="where fallback shards are built")
    args = p.parse_args(argv)

    from pretrain.data.loader import TokenLoader
    from pretrain.data.shards import MANIFEST_FILE

    shards = Path(args.shards)
    if not (shards / MANIFEST_FILE).exists():
        print(f"{shards}: no manifest; falling back to a small shard directory")
        built = build_small_shards(Path(args.corpora), Path(args.out_dir))
        if built is None:
            print(f"SKIP: no shards at {shards} and no {args.corpora}/books.jsonl.gz to build some")
            return 0
        shards = built

    pinning = pin_to_one_core()
    import torch

    print(
        f"machine: commit {git_commit()}, cpu {cpu_model()}, nproc {os.cpu_count()}, "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
    print(f"process: {pinning}")

    common = {"seq_len": args.seq_len, "micro_batch_size": args.batch, "seed": 0}
    settings = [
        ("1 source, shuffle on", [shards], None, True),
        ("1 source, shuffle off", [shards], None, False),
        ("2-source blend 0.7/0.3, shuffle on", [shards, shards], [0.7, 0.3], True),
    ]
    rows = []
    busy0, own0, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for name, paths, weights, shuffle in settings:
        t0 = time.perf_counter()
        src = paths[0] if len(paths) == 1 else paths
        loader = TokenLoader(src, weights=weights, shuffle=shuffle, **common)
        open_s = time.perf_counter() - t0
        rate, batches, tokens = measure(loader, args.seconds)
        rows.append((name, open_s, batches, tokens, rate))
        if len(rows) == 1:
            print(
                f"shards: {shards}, {loader.sources[0].num_tokens:,} train tokens, "
                f"{loader.num_windows[0]:,} windows of seq_len + 1 = {args.seq_len + 1}, "
                f"batch {args.batch} ({args.batch * (args.seq_len + 1):,} tokens)"
            )
    wall = time.perf_counter() - start
    busy1, own1 = busy_cpu_seconds(), own_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
        note = "  WARNING: machine busy, numbers are noisy" if other > NOISE_CORES else ""
        print(f"other processes kept {other:.2f} cores busy meanwhile{note}")
    print()
    width = max(len(r[0]) for r in rows)
    print(f"{'setting':<{width}}  {'open s':>6}  {'batches':>8}  {'Mtokens/s':>9}  target met")
    for name, open_s, batches, _tokens, rate in rows:
        met = "yes" if rate >= TARGET_TOKENS_PER_S else "no"
        print(f"{name:<{width}}  {open_s:>6.2f}  {batches:>8,}  {rate / 1e6:>9.2f}  {met}")
    print(f"target: >= {TARGET_TOKENS_PER_S / 1e6:.0f} M tokens/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
