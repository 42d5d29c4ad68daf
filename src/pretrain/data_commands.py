"""``pretrain data prepare|filter|dedup|mix|score``: the data-quality commands (no logic here
beyond arguments, configs and tables)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from pretrain.console import console


def add_parsers(data: argparse._SubParsersAction) -> None:
    """Register the data-quality subcommands under ``pretrain data``."""

    def sharding(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=int, help="processes (default: the config's, or 1)")
        p.add_argument("--task-index", type=int, help="this machine's share (Slurm: automatic)")
        p.add_argument("--num-tasks", type=int, help="machines sharing the stage")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    prep = data.add_parser("prepare", help="filter, dedup, mix and tokenize from a YAML config")
    prep.add_argument("config", help="YAML (see configs/data/prepare.yaml)")
    sharding(prep)

    for name, what in (("filter", "normalize and quality-filter"), ("dedup", "deduplicate")):
        p = data.add_parser(name, help=f"{what} JSONL documents into --out")
        p.add_argument("--input", nargs="+", required=True, help="files, dirs or globs")
        p.add_argument("--out", required=True)
        p.add_argument("--config", help="a prepare YAML whose filters/dedup settings to use")
        sharding(p)

    mix = data.add_parser("mix", help="repeat or sample domains of JSONL to weighted shares")
    mix.add_argument(
        "--domain", nargs="+", required=True, metavar="NAME=PATH[:WEIGHT[:MAX_EPOCHS]]"
    )
    mix.add_argument("--out", required=True)
    mix.add_argument("--temperature", type=float, default=1.0)
    mix.add_argument("--total-words", type=int)
    mix.add_argument("--seed", type=int, default=0)
    sharding(mix)

    score = data.add_parser("score", help="filter + dedup INPUT and score against TRUTH")
    score.add_argument("input")
    score.add_argument("truth")
    score.add_argument("--out", required=True, help="writes kept.txt and removed.jsonl here")
    score.add_argument("--config", help="a prepare YAML whose filters/dedup settings to use")
    score.add_argument("--workers", type=int, default=1)
    score.add_argument("--json", action="store_true")


def _prepare_config(args: argparse.Namespace, overrides: dict[str, Any]):
    from pretrain.config import from_dict, load_config
    from pretrain.data.prepare_config import PrepareConfig

    if getattr(args, "config", None):
        cfg = load_config(PrepareConfig, args.config, [f"{k}={json.dumps(v)}"
                                                       for k, v in overrides.items()])  # fmt: skip
    else:
        cfg = from_dict(PrepareConfig, overrides)
    if getattr(args, "workers", None):
        cfg.workers = args.workers
    return cfg.validate()


def _slice(args: argparse.Namespace):
    from pretrain.data.tasks import TaskSlice

    return TaskSlice.from_args(args.task_index, args.num_tasks)


def data_prepare(args: argparse.Namespace) -> int:
    from pretrain.data.pipeline import prepare

    cfg = _prepare_config(args, {})
    report = prepare(cfg, _slice(args))
    if report is None:
        console.print("this task's share is done; the later stages run once every task is")
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console.print(report_table(report))
        console.print(f"report: {Path(cfg.out) / 'report.json'}")
    return 0


def report_table(report: dict[str, Any]) -> Table:
    """Documents per stage and domain, then removals per rule."""
    table = Table(title="data prepare")
    columns = ["domain", "read", "errors", "filtered out", "duplicates", "kept", "epochs",
               "share", "mixed words", "tokens"]  # fmt: skip
    for c in columns:
        table.add_column(c, justify="left" if c == "domain" else "right")
    for name, d in {**report["domains"], "total": report["totals"]}.items():
        table.add_row(
            name,
            f"{d['documents_read']:,}",
            f"{d['read_errors']:,}",
            f"{d['filter_removed']:,}",
            f"{d['dedup_removed']:,}",
            f"{d['dedup_kept']:,}",
            f"{d['epochs']:.2f}" if "epochs" in d else "",
            f"{d['share']:.1%}" if "share" in d else "",
            f"{d['mixed_words']:,}",
            f"{d['tokens']:,}" if report["shards"] else "",
        )
    stages = Table(title="stages")
    for c in ("stage", "documents in", "documents out", "words in", "words out", "tokens out"):
        stages.add_column(c, justify="left" if c == "stage" else "right")
    for name, st in report["stages"].items():
        cells = [st.get(k) for k in ("documents_in", "documents_out", "words_in", "words_out",
                                     "tokens_out")]  # fmt: skip
        stages.add_row(name, *("" if v is None else f"{v:,}" for v in cells))
    rules = Table(title="removed by rule")
    rules.add_column("rule")
    rules.add_column("documents", justify="right")
    for rule, n in {**report["removed_by_rule"], **report["removed_by_dedup"]}.items():
        rules.add_row(rule, f"{n:,}")
    outer = Table.grid()
    outer.add_row(stages)
    outer.add_row(table)
    outer.add_row(rules)
    return outer


def _single_domain(args: argparse.Namespace, filters: bool, dedup: bool):
    """A prepare config over ``--input`` as one domain, with only the stages asked for."""
    overrides: dict[str, Any] = {"out": args.out, "domains": [{"name": "all",
                                                               "paths": args.input}]}  # fmt: skip
    cfg = _prepare_config(args, overrides)
    cfg.filters.enabled = filters and cfg.filters.enabled
    cfg.normalize = filters and cfg.normalize
    cfg.dedup.exact = dedup and cfg.dedup.exact
    cfg.dedup.near = dedup and cfg.dedup.near
    return cfg


def _stage_summary(title: str, counts: dict[str, int], out: str, args) -> int:
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    table = Table(title=title)
    table.add_column("")
    table.add_column("documents", justify="right")
    for k, v in counts.items():
        table.add_row(k, f"{v:,}")
    console.print(table)
    console.print(f"output: {out}")
    return 0


def data_filter(args: argparse.Namespace) -> int:
    from pretrain.data.pipeline import run_filter_stage

    cfg = _single_domain(args, filters=True, dedup=False)
    reports = run_filter_stage(cfg, _slice(args))
    if reports is None:
        console.print("this task's share is done")
        return 0
    counts = {"read": sum(r["documents"] for r in reports),
              "kept": sum(r["kept"] for r in reports)}  # fmt: skip
    for r in reports:
        for reason, n in r["removed"].items():
            counts[f"removed {reason}"] = counts.get(f"removed {reason}", 0) + n
        for reason, n in r["read_errors"].items():
            counts[f"unreadable {reason}"] = counts.get(f"unreadable {reason}", 0) + n
    return _stage_summary("data filter", counts, str(Path(cfg.out) / "filter" / "kept"), args)


def data_dedup(args: argparse.Namespace) -> int:
    from pretrain.data.dedup_stage import run_dedup_stage
    from pretrain.data.pipeline import run_filter_stage

    cfg = _single_domain(args, filters=False, dedup=True)
    reports = run_filter_stage(cfg, _slice(args))  # reads and counts; filters nothing
    if reports is None:
        console.print("this task's share is done")
        return 0
    result = run_dedup_stage(cfg, reports, _slice(args))
    if result is None:
        console.print("this task's share is done; rerun once every task has finished")
        return 0
    counts = {"read": sum(r["documents"] for r in reports),
              "kept": sum(r["kept"] for r in result["tasks"]), **result["removed_by_reason"],
              "duplicate clusters": result["clusters"]}  # fmt: skip
    return _stage_summary("data dedup", counts, str(Path(cfg.out) / "dedup" / "kept"), args)


def data_mix(args: argparse.Namespace) -> int:
    from pretrain.data.pipeline import run_filter_stage, run_mix_stage

    domains = []
    for spec in args.domain:
        name, sep, rest = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--domain {spec!r}: write NAME=PATH[:WEIGHT[:MAX_EPOCHS]]")
        path, *numbers = rest.split(":")
        if len(numbers) > 2:
            raise ValueError(f"--domain {spec!r}: write NAME=PATH[:WEIGHT[:MAX_EPOCHS]]")
        entry: dict[str, Any] = {"name": name, "paths": [path]}
        for key, text in zip(("weight", "max_epochs"), numbers, strict=False):
            try:
                entry[key] = float(text)
            except ValueError:
                raise ValueError(
                    f"--domain {spec!r}: the {key} of domain {name!r} must be a number, got "
                    f"{text!r} (write NAME=PATH[:WEIGHT[:MAX_EPOCHS]])"
                ) from None
        domains.append(entry)
    mix = {"temperature": args.temperature, "total_tokens": args.total_words, "seed": args.seed}
    cfg = _prepare_config(args, {"out": args.out, "domains": domains, "mix": mix,
                                 "normalize": False, "filters": {"enabled": False},
                                 "dedup": {"exact": False, "near": False}})  # fmt: skip
    reports = run_filter_stage(cfg, _slice(args))
    if reports is None:
        console.print("this task's share is done")
        return 0
    plan, mixed = run_mix_stage(cfg, reports, _slice(args))
    if mixed is None:
        console.print("this task's share is done; rerun once every task has finished")
        return 0
    for name in plan:
        plan[name]["realized_words"] = sum(r["words_out"] for r in mixed if r["domain"] == name)
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    table = Table(title="data mix")
    for c in ("domain", "available words", "share", "epochs", "realized words"):
        table.add_column(c, justify="left" if c == "domain" else "right")
    for name, p in plan.items():
        table.add_row(name, f"{p['available_words']:,}", f"{p['share']:.1%}",
                      f"{p['epochs']:.2f}", f"{p['realized_words']:,}")  # fmt: skip
    console.print(table)
    console.print(f"output: {Path(cfg.out) / 'mix'}")
    return 0


def data_score(args: argparse.Namespace) -> int:
    import gzip

    from pretrain.data.dedup_stage import run_dedup_stage
    from pretrain.data.jsonl_parts import list_parts, read_part
    from pretrain.data.pipeline import run_filter_stage
    from pretrain.data.score import score

    out = Path(args.out)
    args.input = [args.input]
    args.task_index = args.num_tasks = None
    cfg = _single_domain(argparse.Namespace(**{**vars(args), "out": str(out / "work")}),
                         filters=True, dedup=True)  # fmt: skip
    reports = run_filter_stage(cfg, _slice(args))
    run_dedup_stage(cfg, reports)
    work = Path(cfg.out)
    kept, removed, texts = [], [], {}
    for part in list_parts(work / "dedup" / "kept"):
        for doc in read_part(part):
            kept.append(doc["id"])
            texts[doc["id"]] = doc["text"]
    for stage in ("filter/removed", "dedup/removed"):
        for part in list_parts(work / stage):
            for doc in read_part(part):
                removed.append({"id": doc["id"], "reason": doc["reason"],
                                "dup_of": doc.get("dup_of")})  # fmt: skip
                texts[doc["id"]] = doc["text"]
    (out / "kept.txt").write_text("".join(f"{i}\n" for i in kept))
    (out / "removed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in removed))
    with gzip.open(args.truth, "rt") if args.truth.endswith(".gz") else open(args.truth) as f:
        truth = [json.loads(line) for line in f if line.strip()]
    read = sum(r["documents"] for r in reports)
    if read != len(kept) + len(removed):  # then a truth id the stages lack may be a lost one
        raise ValueError(f"{args.input[0]}: {read:,} documents read, but {len(kept):,} kept and "
                         f"{len(removed):,} removed")  # fmt: skip
    # Every document read was decided, so a truth id that was not is not in the input (a
    # subset scored against the whole truth file) or on an unreadable line: left out, counted.
    decided = set(texts)
    outside = sum(r["id"] not in decided for r in truth)
    result = score([r for r in truth if r["id"] in decided], kept, removed, texts)
    result["truth_outside_input"] = outside
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"data score {args.truth}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("dup_precision", "dup_recall", "near_dup_recall_all", "lq_recall",
                "clean_removed_fraction"):  # fmt: skip
        # None: the input holds no document of the kind the metric is over
        table.add_row(key, "n/a" if result[key] is None else f"{result[key]:.4f}")
    console.print(table)
    if outside:
        console.print(
            f"{outside:,} documents of {args.truth} are not in {args.input[0]} (or on lines "
            "that could not be read): left out"
        )
    if result["duplicates_without_original"]:
        console.print(
            f"{result['duplicates_without_original']:,} copies in {args.truth} have their "
            f"original outside {args.input[0]}: they are left out of dup_recall and "
            "near_dup_recall_all"
        )
    return 0
