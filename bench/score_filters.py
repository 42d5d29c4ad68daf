"""Quality filters on ``corpora/dirty/dev`` against its truth, and their single-process speed.

Quality (normalize, then ``QualityFilter``, on every document of ``dirty/dev.jsonl.gz``):

- ``lq_recall``: share of the 600 ``low_quality`` documents removed, overall and per type;
- ``clean_removed_fraction``: share of the 3,000 ``clean`` documents removed;
- removals per reason, and the clean removals per reason and per source (the first part
  of the truth's ``origin``: books, docs, wiki, speeches).

Targets: lq_recall >= 0.95 and clean_removed_fraction <= 0.05.

Speed: every top-level ``CORPORA/*.jsonl.gz`` is read into memory first, then
``normalize_text`` + ``QualityFilter`` run over all of it in this one process; MB/s is UTF-8
bytes of the input text / 1e6 / seconds (best of ``--repeats``). For scale: datatrove runs
its filters and MinHash at about 0.55-0.6 MB/s on 2 workers (``reference/data.md``); the
pipeline target is 3x that.

Run from the repository root::

    python bench/score_filters.py [--corpora ../shared/corpora] [--blind] [--examples 3]

``--blind`` applies every rule to every document by physical lines (``content_aware=False,
unwrap_lines=False``), to see what content-type sparing and unwrapping save. This is a
benchmark: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from machine import REPO, cpu_model, git_commit

sys.path.insert(0, str(REPO / "src"))

from pretrain.data.filters import FilterConfig, QualityFilter  # noqa: E402
from pretrain.data.jsonl_parts import read_part  # noqa: E402
from pretrain.data.normalize import normalize_text  # noqa: E402
from pretrain.data.score import score  # noqa: E402

DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"


def read_jsonl(path: Path) -> list[dict]:
    return list(read_part(path))


def score_dirty(corpora: Path, filt: QualityFilter, examples: int = 0) -> dict:
    docs = read_jsonl(corpora / "dirty" / "dev.jsonl.gz")
    truth = read_jsonl(corpora / "dirty" / "dev_truth.jsonl.gz")
    by_id = {t["id"]: t for t in truth}
    kept, removed = [], []
    texts = {}
    for doc in docs:
        text = normalize_text(doc["text"])
        texts[doc["id"]] = doc["text"]
        reason = filt(text)
        if reason is None:
            kept.append(doc["id"])
        else:
            removed.append({"id": doc["id"], "reason": reason})
    result = score(truth, kept, removed, texts)
    clean_reasons: Counter[str] = Counter()
    clean_sources: Counter[str] = Counter()
    clean_total: Counter[str] = Counter()
    shown: dict[str, int] = defaultdict(int)
    for t in truth:
        if t["kind"] == "clean":
            clean_total[t["origin"].split("/")[0]] += 1
    for r in removed:
        t = by_id[r["id"]]
        if t["kind"] != "clean":
            continue
        clean_reasons[r["reason"]] += 1
        clean_sources[t["origin"].split("/")[0]] += 1
        if shown[r["reason"]] < examples:
            shown[r["reason"]] += 1
            snippet = normalize_text(texts[r["id"]])[:600].replace("\n", "\n    ")
            print(f"--- clean removed by {r['reason']}: {t['origin']}\n    {snippet}\n")
    result["clean_removed_by_reason"] = dict(clean_reasons.most_common())
    result["clean_removed_by_source"] = {
        s: f"{clean_sources[s]}/{n}" for s, n in sorted(clean_total.items())
    }
    return result


def throughput(corpora: Path, filt: QualityFilter, repeats: int) -> dict | None:
    files = sorted(corpora.glob("*.jsonl.gz"))
    if not files:
        return None
    texts = [doc["text"] for path in files for doc in read_jsonl(path)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            filt(normalize_text(text))
        best = min(best, time.perf_counter() - start)
    return {
        "files": [p.name for p in files],
        "documents": len(texts),
        "mb": n_bytes / 1e6,
        "seconds": best,
        "mb_per_s": n_bytes / 1e6 / best,
        "docs_per_s": len(texts) / best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--blind", action="store_true", help="no content types, no unwrapping")
    parser.add_argument("--examples", type=int, default=0, help="clean removals to show per reason")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    filt = QualityFilter(FilterConfig(content_aware=not args.blind, unwrap_lines=not args.blind))
    dirty = args.corpora / "dirty" / "dev.jsonl.gz"
    if not dirty.exists():
        print(f"SKIP: {dirty} is absent; nothing scored or measured")
        return
    report = {"commit": git_commit(), "cpu": cpu_model(), "content_aware": not args.blind}
    report["quality"] = score_dirty(args.corpora, filt, args.examples)
    if not args.no_speed:
        report["speed"] = throughput(args.corpora, filt, args.repeats)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    q = report["quality"]
    print(f"commit {report['commit']}, {report['cpu']}, content_aware={not args.blind}")
    print(f"lq_recall {q['lq_recall']:.4f} (target >= 0.95)")
    for kind, value in q["lq_recall_by_type"].items():
        print(f"  {kind:32s} {value:.4f}")
    print(f"clean_removed_fraction {q['clean_removed_fraction']:.4f} (target <= 0.05)")
    print("clean removals by source: " + ", ".join(
        f"{s} {v}" for s, v in q["clean_removed_by_source"].items()))  # fmt: skip
    print("clean removals by reason:")
    for reason, n in q["clean_removed_by_reason"].items():
        print(f"  {reason:45s} {n}")
    print("all removals by reason:")
    for reason, n in q["removed_by_reason"].items():
        print(f"  {reason:45s} {n}")
    speed = report.get("speed")
    if speed is None and not args.no_speed:
        print(f"SKIP speed: no *.jsonl.gz at {args.corpora}")
    elif speed:
        print(f"speed (normalize + filters, 1 process): {speed['mb']:.1f} MB, "
              f"{speed['documents']} docs from {', '.join(speed['files'])}: "
              f"{speed['mb_per_s']:.2f} MB/s, {speed['docs_per_s']:.0f} docs/s")  # fmt: skip


if __name__ == "__main__":
    main()
