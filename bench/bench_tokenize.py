"""Tokenization throughput: ``tokenize_to_shards`` against the Hugging Face ``tokenizers`` ceiling.

What is compared, on the same inputs (every top-level ``CORPORA/*.jsonl.gz``) and tokenizer:

- ceiling: all texts are read into memory first, then ``tokenizers.Tokenizer.encode_batch``
  is timed on the backend of ``pretrain.tokenizer.Tokenizer.load(dir)`` with exactly
  ``--workers`` rayon threads (``RAYON_NUM_THREADS``, set before the library starts its thread
  pool, in a fresh subprocess). ``encode_batch_fast`` (no offsets, what our workers call) is
  timed too and shown for reference. The same is done with 1 thread, and the rayon threads
  that appear in the process are counted, to show the thread count took effect.
- ours: the full ``pretrain.data.tokenize.tokenize_to_shards(..., workers=N)`` in a fresh
  subprocess and a fresh output directory: reading gzip, parsing JSON, the process pool,
  writing and hashing shards.

Throughput is MB/s = UTF-8 bytes of text / 1e6 / seconds; each measurement is repeated
``--repeats`` times, ceiling and ours alternating, and the best (lowest) time is kept. The CPU
time other processes used meanwhile is printed; above 0.1 core the run is flagged as noisy.
Target: ours / ceiling >= 0.80.

Run from the repository root (the tokenizer is trained once into OUT_DIR/tokenizer, then
reused; the last run's shards stay in OUT_DIR/shards for ``bench/bench_loader.py``)::

    python bench/bench_tokenize.py --corpora ../shared/corpora --workers 2

This is a benchmark, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import busy_cpu_seconds, cpu_model, git_commit, usable_cores

TARGET_RATIO = 0.80
NOISE_CORES = 0.10  # other processes busier than this during a run: warn
TRAIN_FILES = ("books.jsonl.gz", "docs.jsonl.gz", "code.jsonl.gz")


def machine_facts() -> dict[str, str]:
    import tokenizers

    return {
        "commit": git_commit(),
        "cpu": cpu_model(),
        "nproc": str(usable_cores()),
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
    }


# --- child processes -------------------------------------------------------------------------


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def child_ceiling(tokenizer_dir: str, inputs: list[str], repeats: int) -> dict:
    """Runs in a subprocess whose environment fixes RAYON_NUM_THREADS."""
    from pretrain.data.readers import ReadReport, iter_documents
    from pretrain.tokenizer import Tokenizer

    report = ReadReport()
    texts = [d["text"] for d in iter_documents(inputs, report)]
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    backend = Tokenizer.load(tokenizer_dir).backend
    threads_before = _thread_count()
    result: dict = {
        "num_documents": len(texts),
        "num_text_bytes": num_bytes,
        "read_errors": report.num_errors,
    }
    for method in ("encode_batch", "encode_batch_fast"):
        encode = getattr(backend, method)
        times = []
        num_tokens = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            encodings = encode(texts, add_special_tokens=False)
            times.append(time.perf_counter() - t0)
            num_tokens = sum(len(e) for e in encodings)
            del encodings
        result[method] = {"seconds": times, "num_tokens": num_tokens}
    result["threads_before_encode"] = threads_before
    result["threads_after_encode"] = _thread_count()
    return result


def child_ours(tokenizer_dir: str, inputs: list[str], out: str, workers: int) -> dict:
    from pretrain.data.tokenize import tokenize_to_shards

    t0 = time.perf_counter()
    manifest = tokenize_to_shards(
        tokenizer_dir, inputs, out, val_fraction=0.01, workers=workers, overwrite=True
    )
    seconds = time.perf_counter() - t0
    splits = manifest["splits"].values()
    return {
        "seconds": seconds,
        "num_documents": sum(s["num_documents"] for s in splits),
        "num_tokens": sum(s["num_tokens"] for s in splits),
        "num_text_bytes": sum(s["num_text_bytes"] for s in splits),
    }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(args: list[str], env: dict[str, str]) -> dict:
    """Run this script in ``--child`` mode; the child prints one JSON line last.

    Adds ``other_cores``: the average number of cores that other processes of the machine kept
    busy meanwhile (machine CPU time minus this child's and its workers'), a noise indicator.
    """
    busy0, own0, t0 = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    busy1, own1 = busy_cpu_seconds(), children_cpu_seconds()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {args[:2]} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if busy0 is not None and busy1 is not None:
        result["other_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return result


def report_noise(what: str, result: dict) -> None:
    other = result.get("other_cores")
    if other is None:
        return
    note = "  WARNING: machine busy, numbers are noisy" if other > NOISE_CORES else ""
    print(f"  other processes kept {other:.2f} cores busy during {what}{note}", flush=True)


def ceiling_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(threads)
    env.pop("RAYON_RS_NUM_CPUS", None)
    env["TOKENIZERS_PARALLELISM"] = "true"
    return env


# --- parent ----------------------------------------------------------------------------------


def ensure_tokenizer(corpora: Path, out_dir: Path, vocab_size: int) -> Path:
    from pretrain.tokenizer import META_FILE, TOKENIZER_FILE, Tokenizer, train_tokenizer_from_files

    tok_dir = out_dir / "tokenizer"
    meta = tok_dir / META_FILE
    if (tok_dir / TOKENIZER_FILE).exists() and meta.exists():
        settings = json.loads(meta.read_text()).get("training", {}).get("settings", {})
        if settings.get("vocab_size") == vocab_size:
            print(f"tokenizer: reusing {tok_dir} (vocab {Tokenizer.load(tok_dir).vocab_size})")
            return tok_dir
    files = [str(corpora / f) for f in TRAIN_FILES]
    print(f"tokenizer: training vocab {vocab_size} on {', '.join(TRAIN_FILES)} ...", flush=True)
    t0 = time.perf_counter()
    tokenizer, _ = train_tokenizer_from_files(files, vocab_size)
    tokenizer.save(tok_dir)
    print(f"tokenizer: trained in {time.perf_counter() - t0:.1f} s, saved to {tok_dir}")
    return tok_dir


def mb_per_s(num_bytes: int, seconds: float) -> float:
    return num_bytes / 1e6 / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--corpora", default="../shared/corpora", help="directory of *.jsonl.gz")
    p.add_argument("--workers", type=int, default=2, help="threads (ceiling) = processes (ours)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--out-dir", default="bench/out", help="tokenizer and shards go here")
    p.add_argument("--repeats", type=int, default=2, help="runs per measurement; best is kept")
    args = p.parse_args(argv)

    corpora = Path(args.corpora)
    inputs = sorted(str(f) for f in corpora.glob("*.jsonl.gz")) if corpora.is_dir() else []
    if not inputs:
        print(f"SKIP: no corpora at {corpora} (no top-level *.jsonl.gz); nothing measured")
        return 0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    facts = machine_facts()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    print(f"inputs: {', '.join(Path(i).name for i in inputs)}")
    tok_dir = ensure_tokenizer(corpora, out_dir, args.vocab_size)

    # Ceiling and ours alternate, one run of each per round, so that slow drift of the
    # machine's speed (shared hosts) affects both alike; the 1-thread ceiling only runs when
    # --workers > 1, to show that RAYON_NUM_THREADS took effect.
    def ceiling_run(threads: int) -> dict:
        print(f"ceiling: encode_batch with RAYON_NUM_THREADS={threads} ...", flush=True)
        ceiling_args = ["--child", "ceiling", str(tok_dir), "1", *inputs]
        result = run_child(ceiling_args, ceiling_env(threads))
        report_noise("this ceiling run", result)
        return result

    def merge(into: dict | None, new: dict) -> dict:
        if into is None:
            return new
        for method in ("encode_batch", "encode_batch_fast"):
            into[method]["seconds"] += new[method]["seconds"]
        return into

    thread_counts = sorted({1, args.workers})
    ceilings: dict[int, dict] = {}
    ours_times = []
    ours: dict = {}
    shards = out_dir / "shards"
    env = dict(os.environ)
    env.pop("RAYON_NUM_THREADS", None)
    for i in range(args.repeats):
        print(f"round {i + 1} of {args.repeats}", flush=True)
        for threads in thread_counts:
            ceilings[threads] = merge(ceilings.get(threads), ceiling_run(threads))
        print(f"ours: tokenize_to_shards workers={args.workers} ...", flush=True)
        ours = run_child(
            ["--child", "ours", str(tok_dir), str(shards), str(args.workers)] + inputs, env
        )
        ours_times.append(ours["seconds"])
        report_noise("this run", ours)
    ceiling = ceilings[args.workers]

    num_bytes = ceiling["num_text_bytes"]
    if ours["num_text_bytes"] != num_bytes or ours["num_documents"] != ceiling["num_documents"]:
        print(
            f"WARNING: inputs differ: ceiling {ceiling['num_documents']} docs "
            f"{num_bytes} bytes, ours {ours['num_documents']} docs {ours['num_text_bytes']} bytes"
        )
    eb_tokens = ceiling["encode_batch"]["num_tokens"]
    print()
    print(
        f"documents {ceiling['num_documents']:,}, text {num_bytes / 1e6:.2f} MB "
        f"({num_bytes:,} bytes), tokens {eb_tokens:,} "
        f"(+ 1 EOS per document in shards: {ours['num_tokens']:,}), "
        f"read errors {ceiling['read_errors']}"
    )
    for threads, c in ceilings.items():
        print(
            f"threads check: RAYON_NUM_THREADS={threads}: process threads "
            f"{c['threads_before_encode']} before encode, {c['threads_after_encode']} after"
        )
    print()

    rows: list[tuple[str, list[float]]] = []
    for threads in thread_counts:
        for method in ("encode_batch", "encode_batch_fast"):
            name = f"ceiling {method}, {threads} thread(s)"
            rows.append((name, ceilings[threads][method]["seconds"]))
    rows.append((f"ours tokenize_to_shards, {args.workers} worker(s)", ours_times))

    ceil_best = min(ceiling["encode_batch"]["seconds"])
    fast_best = min(ceiling["encode_batch_fast"]["seconds"])
    ours_best = min(ours_times)
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'best s':>8}  {'MB/s':>7}  runs (s)")
    for name, times in rows:
        best = min(times)
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name:<{width}}  {best:>8.2f}  {mb_per_s(num_bytes, best):>7.2f}  {runs}")
    print()
    for threads in thread_counts[1:]:
        one = min(ceilings[1]["encode_batch"]["seconds"])
        many = min(ceilings[threads]["encode_batch"]["seconds"])
        print(f"ceiling speedup {threads} threads vs 1: {one / many:.2f}x")
    for method, best in (("encode_batch", ceil_best), ("encode_batch_fast", fast_best)):
        ratio = best / ours_best
        met = "yes" if ratio >= TARGET_RATIO else "no"
        print(
            f"ratio ours/ceiling ({method}, {args.workers} threads): {ratio:.3f}"
            f"  target >= {TARGET_RATIO:.2f} met: {met}"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, tok, *rest = sys.argv[2:]
        if kind == "ceiling":
            res = child_ceiling(tok, rest[1:], int(rest[0]))
        else:
            res = child_ours(tok, rest[2:], rest[0], int(rest[1]))
        print(json.dumps(res))
        sys.exit(0)
    sys.exit(main())
