"""Dedup quality on ``corpora/dirty/dev`` against its truth, and single-process throughput.

Runs :func:`pretrain.data.dedup.find_duplicates` (exact, FineWeb 14 x 8 MinHash, verified
permissive pass) with the library's defaults (:class:`~pretrain.data.dedup.DedupConfig`;
every field is a flag, e.g. ``--no-verify`` for FineWeb's single pass or ``--bands 20
--rows 5``) and prints the scorer's metrics (:func:`pretrain.data.score.score`; documents not
removed count as kept): ``dup_precision``, ``dup_recall``, ``near_dup_recall_all`` and the
counts. Targets: dup_recall >= 0.98 and near_dup_recall_all >= 0.70 at dup_precision >= 0.98.

Throughput: documents are read and decoded first (not timed); then step 1 (signatures and
bucket files, one task) and step 2 (cluster) are timed in one process, as documents/s and
MB/s of UTF-8 text, on dirty/dev and on ``--throughput-inputs`` (default: every
``CORPORA/*.jsonl.gz``). numpy runs these steps on one thread. The word-character table
that tokenization uses is built once per process before timing and reported apart.

Run from the repository root::

    python bench/score_dedup.py [--corpora DIR] [--json] [--skip-throughput] [DedupConfig flags]

This is a benchmark, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, git_commit
from pretrain.data.dedup import (
    DedupConfig,
    cluster_duplicates,
    shard_documents,
    write_task_signatures,
)
from pretrain.data.dedup_cli import add_config_flags, config_from_args
from pretrain.data.jsonl_parts import read_part
from pretrain.data.minhash import ShingleHasher
from pretrain.data.readers import iter_documents
from pretrain.data.score import score

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SCORE_KEYS = ("dup_precision", "dup_recall", "near_dup_recall_all", "documents", "kept",
              "removed", "dedup_removals", "dedup_removals_wrong", "duplicates_scored",
              "groups_emptied", "removed_by_reason")  # fmt: skip


def timed_dedup(docs: list[dict], config: DedupConfig) -> tuple[list[dict], dict]:
    """Removal records and the timing of steps 1 and 2 on in-memory documents."""
    megabytes = sum(len(d["text"].encode("utf-8")) for d in docs) / 1e6
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as work_dir:
        start = time.perf_counter()
        write_task_signatures(shard_documents(docs), work_dir, 0, 1, config)
        signed = time.perf_counter()
        removed = cluster_duplicates(work_dir)
        done = time.perf_counter()
    total = done - start
    timing = {
        "documents": len(docs),
        "megabytes": round(megabytes, 2),
        "signature_s": round(signed - start, 3),
        "cluster_s": round(done - signed, 3),
        "total_s": round(total, 3),
        "docs_per_s": round(len(docs) / total),
        "mb_per_s": round(megabytes / total, 2),
    }
    return removed, timing


def read_jsonl(path: Path) -> list[dict]:
    return list(read_part(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--throughput-inputs", nargs="*", default=None,
                        help="default: CORPORA/*.jsonl.gz")  # fmt: skip
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_config_flags(parser)
    args = parser.parse_args()
    config = config_from_args(args)

    dev = args.corpora / "dirty" / "dev.jsonl.gz"
    truth_path = args.corpora / "dirty" / "dev_truth.jsonl.gz"
    if not dev.exists() or not truth_path.exists():
        print(f"no {dev} or {truth_path}; pass --corpora DIR", file=sys.stderr)
        return 2
    docs, truth = read_jsonl(dev), read_jsonl(truth_path)
    start = time.perf_counter()
    ShingleHasher(config.ngram)("builds the word-character table once per process")
    setup_s = time.perf_counter() - start
    removed, dev_timing = timed_dedup(docs, config)
    gone = {r["id"] for r in removed}
    texts = {d["id"]: d["text"] for d in docs}
    metrics = score(truth, [d["id"] for d in docs if d["id"] not in gone], removed, texts)
    result = {
        "score": {k: metrics[k] for k in SCORE_KEYS},
        "setup_s": round(setup_s, 3),
        "throughput_dirty_dev": dev_timing,
        "config": {**config.__dict__, "verify_banding": list(config.verify_banding())},
        "commit": git_commit(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    if not args.skip_throughput:
        inputs = args.throughput_inputs or sorted(str(p) for p in args.corpora.glob("*.jsonl.gz"))
        corpus = list(iter_documents(inputs))
        _, timing = timed_dedup(corpus, config)
        result["throughput_corpora"] = {"inputs": [Path(p).name for p in inputs], **timing}

    if args.json:
        print(json.dumps(result))
        return 0
    s = result["score"]
    print(f"dirty/dev: dup_precision {s['dup_precision']:.4f}  dup_recall {s['dup_recall']:.4f}  "
          f"near_dup_recall_all {s['near_dup_recall_all']:.4f}")  # fmt: skip
    print(f"  documents {s['documents']}, removed {s['dedup_removals']} "
          f"({s['dedup_removals_wrong']} wrong, {s['groups_emptied']} groups emptied), "
          f"by reason {s['removed_by_reason']}")  # fmt: skip
    for name in ("throughput_dirty_dev", "throughput_corpora"):
        if name in result:
            t = result[name]
            print(f"{name}: {t['documents']} docs, {t['megabytes']} MB in {t['total_s']} s "
                  f"(signatures {t['signature_s']} s, cluster {t['cluster_s']} s): "
                  f"{t['docs_per_s']} docs/s, {t['mb_per_s']} MB/s")  # fmt: skip
    print(f"one-time setup per process (word-character table): {result['setup_s']} s")
    print(f"config {result['config']}")
    print(f"commit {result['commit']}, {result['cpu']}, Python {result['python']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
