"""datatrove's FineWeb recipe (filters + MinHash 14x8 on word 5-grams), for bench_data_pipeline.

Runs in datatrove's own environment (not a dependency of pretrain):

    python3 -m venv bench/.venv-datatrove
    bench/.venv-datatrove/bin/pip install "datatrove[processing]==0.10.1" spacy orjson
    bench/.venv-datatrove/bin/python bench/datatrove_recipe.py --input FILES... --work DIR

Stage 1 reads JSONL and applies GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter
and FineWebQualityFilter with their defaults (datatrove ``examples/fineweb.py``), each with an
exclusion writer, then MinhashDedupSignature; stages 2-4 are MinhashDedupBuckets,
MinhashDedupCluster and MinhashDedupFilter (writing kept and removed documents). Every stage
runs on ``--workers`` local processes with as many tasks. Prints one JSON line: seconds,
kept ids and removed ids with reasons (``filter:<step>`` or ``dedup:minhash``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    data = work / "input"
    data.mkdir(parents=True)
    for i, f in enumerate(args.input):  # one folder so JsonlReader sees every file
        shutil.copy(f, data / f"{i:03d}-{Path(f).name}")
    config = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14,
                           hashes_per_bucket=8, n_grams=5)  # fmt: skip
    n = args.workers

    def reader():
        return JsonlReader(str(data), id_key="id", text_key="text", glob_pattern="*.jsonl.gz")

    def excluded(name):
        return JsonlWriter(str(work / "removed" / name))

    stages = [
        [
            reader(),
            GopherRepetitionFilter(exclusion_writer=excluded("gopher_repetition")),
            GopherQualityFilter(exclusion_writer=excluded("gopher_quality")),
            C4QualityFilter(filter_no_terminal_punct=False, exclusion_writer=excluded("c4")),
            FineWebQualityFilter(exclusion_writer=excluded("fineweb")),
            JsonlWriter(str(work / "filtered")),
        ],
        [
            JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl.gz"),
            MinhashDedupSignature(output_folder=str(work / "signatures"), config=config),
        ],
        [
            MinhashDedupBuckets(
                input_folder=str(work / "signatures"),
                output_folder=str(work / "buckets"),
                config=config,
            )
        ],  # fmt: skip
        [
            MinhashDedupCluster(
                input_folder=str(work / "buckets"),
                output_folder=str(work / "remove_ids"),
                config=config,
            )
        ],  # fmt: skip
        [
            JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl.gz"),
            MinhashDedupFilter(
                input_folder=str(work / "remove_ids"), exclusion_writer=excluded("dedup")
            ),  # fmt: skip
            JsonlWriter(str(work / "kept")),
        ],
    ]
    tasks = [n, n, config.num_buckets, 1, n]
    start = time.perf_counter()
    for i, (pipeline, t) in enumerate(zip(stages, tasks, strict=True)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=t, workers=min(n, t),
                              logging_dir=str(work / "logs" / str(i))).run()  # fmt: skip
    seconds = time.perf_counter() - start

    def ids(folder: Path) -> list[str]:
        out = []
        for f in sorted(folder.glob("*.jsonl.gz")):
            with gzip.open(f, "rt") as fh:
                out += [json.loads(line)["id"] for line in fh]
        return out

    removed = []
    for name in ("gopher_repetition", "gopher_quality", "c4", "fineweb"):
        removed += [{"id": i, "reason": f"filter:{name}"} for i in ids(work / "removed" / name)]
    removed += [{"id": i, "reason": "dedup:minhash"} for i in ids(work / "removed" / "dedup")]
    print(json.dumps({"seconds": seconds, "kept": ids(work / "kept"), "removed": removed}))


if __name__ == "__main__":
    main()
