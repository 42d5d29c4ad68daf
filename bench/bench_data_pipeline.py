"""Filters + MinHash dedup throughput and duplicate recall: pretrain against datatrove.

    python bench/bench_data_pipeline.py                   # ../shared/corpora, 2 workers
    python bench/bench_data_pipeline.py --workers 2 --rounds 2

Both sides read the same gzipped JSONL and write their kept documents:

- **ours**: ``pretrain data`` filter and dedup stages (normalize, Gopher quality and
  repetition, C4, FineWeb filters with code/technical-text sparing; exact dedup, MinHash 14x8
  on word 5-grams plus the verified 28x2 pass) in a fresh subprocess, ``--workers`` processes.
- **datatrove** (``bench/datatrove_recipe.py``, run by the Python of its own environment,
  ``--datatrove-python``, default ``bench/.venv-datatrove/bin/python``): the FineWeb recipe,
  GopherRepetition + GopherQuality + C4Quality + FineWebQuality, then MinHash 14x8 on word
  5-grams, on ``--workers`` local processes.

Throughput: input MB (UTF-8 text bytes) and documents over wall seconds, best of
``--rounds``, sides alternating. Then both run on ``dirty/dev`` and are scored against its
truth (``pretrain.data.score``): duplicate recall and precision, near-duplicate recall, low-
quality recall and the share of clean documents removed. Prints a table; never fails on the
numbers (this is a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import REPO, cpu_model, git_commit, usable_cores

CORPORA = REPO.parent / "shared" / "corpora"
OURS = """
import json, sys, time
from pretrain.data.dedup_stage import run_dedup_stage
from pretrain.data.pipeline import run_filter_stage
from pretrain.data.prepare_config import DomainConfig, PrepareConfig
from pretrain.data.jsonl_parts import list_parts, read_part
inputs, out, workers = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = PrepareConfig(out=out, domains=[DomainConfig("all", inputs)], workers=workers).validate()
start = time.perf_counter()
reports = run_filter_stage(cfg, None)
run_dedup_stage(cfg, reports)
seconds = time.perf_counter() - start
kept = [d["id"] for p in list_parts(out + "/dedup/kept") for d in read_part(p)]
removed = [{"id": d["id"], "reason": d["reason"]} for stage in ("filter", "dedup")
           for p in list_parts(out + f"/{stage}/removed") for d in read_part(p)]
print(json.dumps({"seconds": seconds, "kept": kept, "removed": removed}))
"""


def text_size(files: list[Path]) -> tuple[int, int]:
    docs = size = 0
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                docs += 1
                size += len(json.loads(line)["text"].encode("utf-8"))
    return docs, size


def run_ours(files: list[Path], workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", OURS, json.dumps([str(f) for f in files]), tmp, str(workers)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_datatrove(files: list[Path], workers: int, python: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [python, str(REPO / "bench" / "datatrove_recipe.py"), "--input",
               *map(str, files), "--work", tmp, "--workers", str(workers)]  # fmt: skip
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["wall_seconds"] = time.perf_counter() - start
    return result


def score_dirty(result: dict) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from pretrain.data.jsonl_parts import read_part
    from pretrain.data.score import score

    def load(name):
        return list(read_part(CORPORA / "dirty" / name))

    texts = {d["id"]: d["text"] for d in load("dev.jsonl.gz")}
    return score(load("dev_truth.jsonl.gz"), result["kept"], result["removed"], texts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--datatrove-python", default=str(REPO / "bench/.venv-datatrove/bin/python"))
    args = p.parse_args()
    if not CORPORA.exists():
        sys.exit(f"{CORPORA} is absent: nothing to benchmark")
    files = sorted(CORPORA.glob("*.jsonl.gz"))
    docs, size = text_size(files)
    print(
        f"commit {git_commit()}, {cpu_model()}, {usable_cores()} cores, workers "
        f"{args.workers}; {len(files)} files, {docs:,} documents, {size / 1e6:.1f} MB"
    )
    sides = {
        "ours": lambda f: run_ours(f, args.workers),
        "datatrove": lambda f: run_datatrove(f, args.workers, args.datatrove_python),
    }
    best = {}
    for r in range(args.rounds):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            seconds = sides[name](files)["seconds"]
            best[name] = min(best.get(name, seconds), seconds)
            print(f"round {r}: {name} {seconds:.1f} s ({size / 1e6 / seconds:.2f} MB/s)")
    dirty = [CORPORA / "dirty" / "dev.jsonl.gz"]
    scores = {name: score_dirty(run(dirty)) for name, run in sides.items()}
    keys = ["dup_recall", "dup_precision", "near_dup_recall_all", "lq_recall",
            "clean_removed_fraction"]  # fmt: skip
    print("\n| side | MB/s | docs/s | " + " | ".join(keys) + " |")
    print("|---|---:|---:|" + "---:|" * len(keys))
    for name in sides:
        s = best[name]
        cells = " | ".join(f"{scores[name][k]:.3f}" for k in keys)
        print(f"| {name} | {size / 1e6 / s:.2f} | {docs / s:,.0f} | {cells} |")
    print(f"\nours / datatrove throughput = {best['datatrove'] / best['ours']:.2f}")


if __name__ == "__main__":
    main()
