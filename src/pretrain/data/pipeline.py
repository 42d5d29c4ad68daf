"""``pretrain data prepare``: filter -> dedup -> mix -> tokenize, resumable and shardable.

Layout under ``cfg.out``::

    filter/kept/<domain>/part-T.jsonl.gz     kept documents, normalized (and PII-redacted)
    filter/removed/filter/part-T.jsonl.gz    {"id", "domain", "reason", "text"}
    dedup/kept/<domain>/part-T.jsonl.gz      the survivors of exact and near dedup
    dedup/removed/dedup/part-T.jsonl.gz      {"id", "domain", "reason", "dup_of", "text"}
    mix/<domain>/part-T.jsonl.gz             documents repeated or sampled to the shares
    shards/                                  train/val token shards (with a tokenizer)
    report.json                              every count, per stage, rule and domain

Each stage's tasks mark themselves done (:mod:`.tasks`): a rerun continues where it stopped.
With ``--num-tasks N`` (or a Slurm job array) every machine runs its share of each stage's
tasks and stops at the first stage whose other tasks are unfinished. Running the same array
job again (or one process, which takes over whatever is left) advances every stage as far as
the finished tasks allow; the barriers are filter -> dedup signatures -> dedup clustering ->
mix -> tokenize, so at most four array runs finish a corpus, and reruns never redo a task.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text
from pretrain.data.filter_stage import filter_task
from pretrain.data.jsonl_parts import part_name
from pretrain.data.mix_stage import mix_task, plan_mixture
from pretrain.data.prepare_config import PrepareConfig
from pretrain.data.readers import ReadReport, expand_inputs, no_documents_error
from pretrain.data.tasks import TaskSlice, run_stage

log = logging.getLogger(__name__)


def filter_tasks(cfg: PrepareConfig) -> list[tuple]:
    """One task per input file: ``filter_task`` arguments, in domain then file order."""
    out = str(Path(cfg.out) / "filter")
    tasks = []
    for domain in cfg.domains:
        settings = domain.filter_settings(cfg.filters.settings) if cfg.filters.enabled else None
        report = ReadReport()
        files = expand_inputs(domain.paths, report)
        if report.num_errors:
            raise FileNotFoundError(
                f"domains[{domain.name}].paths: {dict(report.errors_by_reason())} "
                f"({', '.join(report.counts)})"
            )
        for f in files:
            tasks.append((len(tasks), str(f.path), f.name, domain.name, out, cfg.normalize,
                          settings, cfg.pii.enabled))  # fmt: skip
    return tasks


def run_filter_stage(cfg: PrepareConfig, task_slice: TaskSlice | None = None) -> list[dict] | None:
    """This machine's filter tasks; every task's report, or None while others still run."""
    stage_dir = Path(cfg.out) / "filter"
    reports = run_stage(filter_task, filter_tasks(cfg), stage_dir, task_slice, cfg.workers)
    if reports is None:
        log.info("filter tasks of other --task-index values are still to run; stopping here")
    elif not any(r["documents"] for r in reports):
        # Refused, as by `data tokenize` and `tokenizer train`: output of nothing only fails
        # later, far from the input to blame. The stage holds nothing but its empty parts and
        # task reports; those would make the rerun, once the input is fixed, skip reading it.
        shutil.rmtree(stage_dir, ignore_errors=True)  # absent when there was no file
        read = ReadReport()
        for r in reports:
            read.counts[r["file"]] = Counter(r["read_errors"])
        raise no_documents_error([p for d in cfg.domains for p in d.paths], read)
    return reports


def run_mix_stage(
    cfg: PrepareConfig, parts: list[dict[str, Any]], task_slice: TaskSlice | None = None
) -> tuple[dict[str, dict], list[dict] | None]:
    """Mix the kept parts (``{"kept_part", "domain", "words_out"}``): the plan and the
    reports (None while other machines' tasks are unfinished)."""
    words = {d.name: 0 for d in cfg.domains}
    for r in parts:
        words[r["domain"]] += r["words_out"]
    plan = plan_mixture(cfg.domains, words, cfg.mix)
    mix_dir = Path(cfg.out) / "mix"
    mix_args = [
        (t, r["kept_part"], r["domain"], str(mix_dir / r["domain"] / part_name(t)),
         plan[r["domain"]]["epochs"], cfg.mix.seed)
        for t, r in enumerate(parts)
    ]  # fmt: skip
    return plan, run_stage(mix_task, mix_args, mix_dir, task_slice, cfg.workers)


def prepare(cfg: PrepareConfig, task_slice: TaskSlice | None = None) -> dict[str, Any] | None:
    """Run the pipeline; the report, or None when other tasks must finish first."""
    from pretrain.data.dedup_stage import run_dedup_stage

    cfg.validate()
    task_slice = task_slice or TaskSlice()
    out = Path(cfg.out)
    filter_reports = run_filter_stage(cfg, task_slice)
    if filter_reports is None:
        return None
    dedup_report = run_dedup_stage(cfg, filter_reports, task_slice)
    if dedup_report is None:
        log.info("dedup tasks of other --task-index values are still to run; stopping here")
        return None
    plan, mix_reports = run_mix_stage(cfg, dedup_report["tasks"], task_slice)
    if mix_reports is None:
        log.info("mix tasks of other --task-index values are still to run; stopping here")
        return None
    shards = None
    if cfg.tokenize.tokenizer:
        from pretrain.data.stats import shard_stats
        from pretrain.data.tokenize import tokenize_to_shards

        tokenize_to_shards(
            cfg.tokenize.tokenizer,
            # the domains' directories, not mix/ itself, whose _tasks/ reports are no input
            [str(out / "mix" / d.name) for d in cfg.domains],
            out / "shards",
            val_fraction=cfg.tokenize.val_fraction,
            workers=cfg.workers,
        )
        shards = shard_stats(out / "shards", checksum=False)
    report = build_report(cfg, filter_reports, dedup_report, plan, mix_reports, shards)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=True))
    return report


def build_report(cfg, filter_reports, dedup_report, plan, mix_reports, shards) -> dict:
    """Counts per stage, rule and domain; ``documents in = kept + removed + errors`` holds."""
    domains = {d.name: _zero_domain() for d in cfg.domains}
    removed_filter: dict[str, int] = {}
    read_errors: dict[str, int] = {}
    for r in filter_reports:
        d = domains[r["domain"]]
        d["documents_read"] += r["documents"]
        d["read_errors"] += sum(r["read_errors"].values())
        d["filter_kept"] += r["kept"]
        d["filter_removed"] += sum(r["removed"].values())
        d["bytes_in"] += r["bytes_in"]
        for reason, n in r["removed"].items():
            removed_filter[reason] = removed_filter.get(reason, 0) + n
        for reason, n in r["read_errors"].items():
            read_errors[reason] = read_errors.get(reason, 0) + n
    for r in dedup_report["tasks"]:
        d = domains[r["domain"]]
        d["dedup_kept"] += r["kept"]
        d["dedup_removed"] += r["removed"]
    for r in mix_reports:
        d = domains[r["domain"]]
        d["mixed_documents"] += r["written"]
        d["mixed_words"] += r["words_out"]
    if shards is not None:  # sources are named <domain>/part-T.jsonl.gz
        for split in shards["splits"].values():
            for source, counts in split["sources"].items():
                domains[source.split("/")[0]]["tokens"] += counts["num_tokens"]
    for name, d in domains.items():
        d.update(plan[name])
        d["accounted"] = (
            d["documents_read"] == d["filter_kept"] + d["filter_removed"]
            and d["filter_kept"] == d["dedup_kept"] + d["dedup_removed"]
        )
    totals = {k: sum(d[k] for d in domains.values()) for k in _zero_domain()}
    filter_words = sum(r["words_out"] for r in filter_reports)
    dedup_words = sum(r["words_out"] for r in dedup_report["tasks"])
    stages = {  # documents and words in and out of each stage; tokens once tokenized
        "filter": {"documents_in": totals["documents_read"], "documents_out":
                   totals["filter_kept"], "bytes_in": totals["bytes_in"],
                   "words_out": filter_words},
        "dedup": {"documents_in": totals["filter_kept"], "documents_out": totals["dedup_kept"],
                  "words_in": filter_words, "words_out": dedup_words},
        "mix": {"documents_in": totals["dedup_kept"], "documents_out":
                totals["mixed_documents"], "words_in": dedup_words,
                "words_out": totals["mixed_words"]},
    }  # fmt: skip
    if shards is not None:
        stages["tokenize"] = {"documents_in": totals["mixed_documents"],
                              "tokens_out": totals["tokens"]}  # fmt: skip
    return {
        "stages": stages,
        "domains": domains,
        "totals": totals,
        "removed_by_rule": dict(sorted(removed_filter.items(), key=lambda kv: -kv[1])),
        "removed_by_dedup": dedup_report["removed_by_reason"],
        "duplicate_clusters": dedup_report["clusters"],
        "read_errors_by_reason": read_errors,
        "shards": None
        if shards is None
        else {"out": str(Path(cfg.out) / "shards"), **{k: shards[k] for k in ("splits", "dtype")}},
        "all_documents_accounted_for": all(d["accounted"] for d in domains.values()),
    }


def _zero_domain() -> dict[str, int]:
    keys = ["documents_read", "read_errors", "filter_kept", "filter_removed", "dedup_kept",
            "dedup_removed", "mixed_documents", "mixed_words", "bytes_in", "tokens"]  # fmt: skip
    return dict.fromkeys(keys, 0)
