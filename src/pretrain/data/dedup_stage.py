"""The dedup stage of ``pretrain data prepare``: exact and MinHash near dedup across domains.

Each kept part of the filter stage is one dedup task; a document's global index is its part's
offset plus its line, so the survivor of every duplicate cluster (the first in input order)
does not depend on the number of workers or machines. The three steps of
:mod:`pretrain.data.dedup` run as tasks of their own, each marked done when finished:

1. ``dedup/signatures``: every part writes its band keys and shingle sets;
2. one clustering over all of them (``dedup/work/removed.jsonl``);
3. ``dedup/kept/<domain>/part-T`` and ``dedup/removed/dedup/part-T``
   (``{"id", "domain", "reason", "dup_of", "text"}``) per part.

Across machines, steps 1 and 3 run each machine's share of the parts; step 2 runs in the
first process that finds every signature task done (its output is written atomically, so two
machines racing produce the same file).

With both dedup kinds off, the filter stage's parts pass through unchanged.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pretrain.data.jsonl_parts import PartWriter, part_name, read_part
from pretrain.data.prepare_config import PrepareConfig
from pretrain.data.tasks import TaskSlice, run_stage


def dedup_config(cfg: PrepareConfig):
    """The :class:`DedupConfig` of ``cfg.dedup`` (``settings``, checked by
    :meth:`PrepareConfig.validate`, override its fields)."""
    from pretrain.data.dedup import DedupConfig

    near = cfg.dedup.near
    fields = {"exact": cfg.dedup.exact, "minhash": near, "verify": near}
    return DedupConfig(**{**fields, **cfg.dedup.settings})


def signature_task(task: int, part: str, offset: int, work: str, num_tasks: int, config):
    from pretrain.data.dedup import write_task_signatures

    docs = ((offset + i, doc) for i, doc in enumerate(read_part(part)))
    write_task_signatures(docs, work, task, num_tasks, config)
    return {"task": task}


def apply_task(
    task: int, part: str, offset: int, domain: str, out_dir: str, removed: dict[int, dict]
) -> dict[str, Any]:
    """Split one part into survivors and removed duplicates; returns the task's report."""
    out = Path(out_dir)
    kept = words = 0
    reasons: Counter[str] = Counter()
    with (
        PartWriter(out / "kept" / domain / part_name(task)) as keep,
        PartWriter(out / "removed" / "dedup" / part_name(task)) as drop,
    ):
        for i, doc in enumerate(read_part(part)):
            record = removed.get(offset + i)
            if record is None:
                kept += 1
                words += len(doc["text"].split())
                keep.write(doc)
                continue
            if record["id"] != doc["id"]:
                raise ValueError(
                    f"{part}: line {i + 1} is {doc['id']!r}, the dedup signatures say "
                    f"{record['id']!r}; the input changed since they were computed: delete "
                    f"{out / 'signatures'} and {out / 'work'} and rerun"
                )
            reasons[record["reason"]] += 1
            drop.write({"id": doc["id"], "domain": domain, "reason": record["reason"],
                        "dup_of": record["dup_of"], "text": doc["text"]})  # fmt: skip
    return {
        "task": task,
        "domain": domain,
        "kept_part": str(out / "kept" / domain / part_name(task)),
        "kept": kept,
        "removed": sum(reasons.values()),
        "removed_by_reason": dict(reasons),
        "words_out": words,
    }


def run_dedup_stage(
    cfg: PrepareConfig, filter_reports: list[dict], task_slice: TaskSlice | None = None
) -> dict[str, Any] | None:
    """Dedup the filter stage's kept parts; ``{"tasks", "removed_by_reason", "clusters"}``,
    or None when tasks of other machines (``task_slice``) have not finished a step yet."""
    from pretrain.data.dedup import cluster_duplicates, load_removals

    out = Path(cfg.out) / "dedup"
    parts = [(r["kept_part"], r["domain"], r["kept"]) for r in filter_reports]
    offsets = [0]
    for _, _, n in parts:
        offsets.append(offsets[-1] + n)
    if not (cfg.dedup.exact or cfg.dedup.near):
        tasks = [
            {"task": t, "domain": d, "kept_part": p, "kept": n, "removed": 0,
             "removed_by_reason": {}, "words_out": r["words_out"]}
            for t, ((p, d, n), r) in enumerate(zip(parts, filter_reports, strict=True))
        ]  # fmt: skip
        return {"tasks": tasks, "removed_by_reason": {}, "clusters": 0}
    config = dedup_config(cfg)
    work = out / "work"
    sig_args = [(t, p, offsets[t], str(work), len(parts), config) for t, (p, _, _) in
                enumerate(parts)]  # fmt: skip
    if run_stage(signature_task, sig_args, out / "signatures", task_slice, cfg.workers) is None:
        return None  # the clustering needs every task's signatures
    removed_path = work / "removed.jsonl"
    records = load_removals(work) if removed_path.exists() else cluster_duplicates(work)
    by_index = {r["index"]: r for r in records}
    apply_args = []
    for t, (p, d, n) in enumerate(parts):
        in_part = {i: by_index[i] for i in range(offsets[t], offsets[t] + n) if i in by_index}
        apply_args.append((t, p, offsets[t], d, str(out), in_part))
    reports = run_stage(apply_task, apply_args, out, task_slice, cfg.workers)
    if reports is None:
        return None
    reasons: Counter[str] = Counter()
    for r in reports:
        reasons.update(r["removed_by_reason"])
    return {
        "tasks": reports,
        "removed_by_reason": dict(reasons.most_common()),
        "clusters": len({r["dup_of"] for r in records}),
    }
