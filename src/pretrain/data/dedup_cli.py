"""Dedup from the command line: a subcommand per step, sharded by ``--num-tasks/--task-index``.

Run the steps of :mod:`pretrain.data.dedup` under any executor (a shell loop, a Slurm array
with ``--task-index $SLURM_ARRAY_TASK_ID``, Ray)::

    python -m pretrain.data.dedup_cli signatures --input DATA --work-dir W \\
        --num-tasks N --task-index K                                  # every task
    python -m pretrain.data.dedup_cli cluster --work-dir W            # once, after all N tasks
    python -m pretrain.data.dedup_cli apply --input DATA --work-dir W \\
        --num-tasks N --task-index K --out kept-K.jsonl.gz --removed removed-K.jsonl

or everything in one process: ``python -m pretrain.data.dedup_cli run --input DATA --out F``.
Settings of :class:`~pretrain.data.dedup.DedupConfig` are flags (``--verify-threshold 0.5``,
``--no-verify``) given to ``signatures`` or ``run``; later steps read them from the work dir.
Task ``K`` takes the documents ``i`` (in the inputs' sorted file order) with ``i % N == K``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from pretrain.data.dedup import (
    DedupConfig,
    apply_removals,
    cluster_duplicates,
    shard_documents,
    write_task_signatures,
)
from pretrain.data.readers import Document, iter_documents

log = logging.getLogger(__name__)


def _optional(kind: type):
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`DedupConfig` field (``--verify-threshold``, ``--no-verify``)."""
    defaults = DedupConfig()
    for f in fields(DedupConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default)  # fmt: skip
        else:
            kind = float if "threshold" in f.name else int
            parser.add_argument(flag, dest=f.name, type=_optional(kind), default=default,
                                help=f"default {default}")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> DedupConfig:
    return DedupConfig(**{f.name: getattr(args, f.name) for f in fields(DedupConfig)})


def _open_out(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8")
    return open(path, "w", encoding="utf-8")  # noqa: SIM115 - returned to a with block


def _write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> int:
    n = 0
    with _open_out(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def _shard(args: argparse.Namespace) -> Iterable[tuple[int, Document]]:
    return shard_documents(iter_documents(args.input), args.num_tasks, args.task_index)


def _apply(args: argparse.Namespace, work_dir: str) -> None:
    removed: list[dict[str, Any]] = []
    kept = _write_jsonl(args.out, apply_removals(_shard(args), work_dir, removed))
    if args.removed:
        _write_jsonl(args.removed, removed)
    print(json.dumps({"kept": kept, "removed": len(removed)}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.data.dedup_cli",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    sub = parser.add_subparsers(dest="step", required=True)
    steps = {
        "signatures": "step 1, per task: hash a shard, write its bucket files",
        "cluster": "step 2, once: merge the buckets, cluster, write the removal list",
        "apply": "step 3, per task: drop the removed documents of a shard",
        "run": "all steps in one process",
    }
    parsers = {name: sub.add_parser(name, help=text) for name, text in steps.items()}
    for name, p in parsers.items():
        if name != "cluster":
            p.add_argument("--input", nargs="+", required=True, help="files, dirs or globs")
        if name != "run":
            p.add_argument("--work-dir", required=True)
        if name in ("signatures", "apply"):
            p.add_argument("--num-tasks", type=int, default=1)
            p.add_argument("--task-index", type=int, default=0)
        if name in ("apply", "run"):
            p.add_argument("--out", required=True, help="kept documents, .jsonl or .jsonl.gz")
            p.add_argument("--removed", help="removal records, .jsonl")
        if name in ("signatures", "run"):
            add_config_flags(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.step == "signatures":
        path = write_task_signatures(
            _shard(args), args.work_dir, args.task_index, args.num_tasks, config_from_args(args)
        )
        log.info("wrote %s", path)
    elif args.step == "cluster":
        records = cluster_duplicates(args.work_dir)
        log.info("%d documents to remove, listed in %s", len(records), Path(args.work_dir))
    elif args.step == "apply":
        _apply(args, args.work_dir)
    else:
        args.num_tasks, args.task_index = 1, 0
        with tempfile.TemporaryDirectory(prefix="dedup-") as work_dir:
            write_task_signatures(_shard(args), work_dir, 0, 1, config_from_args(args))
            cluster_duplicates(work_dir)
            _apply(args, work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
