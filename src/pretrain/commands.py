"""One function per CLI subcommand: call the library, then print a table or JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from rich.table import Table

from pretrain.console import console, read_report_table, stats_table
from pretrain.train.metrics import read_metrics

log = logging.getLogger(__name__)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def tokenizer_train(args: argparse.Namespace) -> int:
    from pretrain.tokenizer import check_output_dir, train_tokenizer_from_files

    check_output_dir(args.out, args.overwrite)  # before training, which can take hours
    tokenizer, report = train_tokenizer_from_files(
        args.input, args.vocab_size, args.min_frequency, args.text_field, args.strict
    )
    out = tokenizer.save(args.out, overwrite=args.overwrite)
    if args.json:
        _print_json(tokenizer.to_meta())
        return 0
    table = read_report_table(report)
    if table is not None:
        console.print(table)
    training = tokenizer.meta["training"]
    console.print(
        f"trained a {tokenizer.vocab_size}-entry tokenizer on {training['num_documents']:,} "
        f"documents ({training['num_bytes'] / 1e6:.1f} MB) -> {out}"
    )
    return 0


def data_tokenize(args: argparse.Namespace) -> int:
    from pretrain.data.stats import shard_stats
    from pretrain.data.tokenize import tokenize_to_shards

    manifest = tokenize_to_shards(
        args.tokenizer,
        args.input,
        args.out,
        val_fraction=args.val_fraction,
        workers=args.workers,
        text_field=args.text_field,
        id_field=args.id_field,
        strict=args.strict,
        shard_max_tokens=args.shard_max_tokens,
        overwrite=args.overwrite,
    )
    stats = shard_stats(args.out, checksum=False)
    if args.json:
        _print_json({"stats": stats, "read_report": manifest["read_report"]})
        return 0
    table = read_report_table(manifest["read_report"])
    if table is not None:
        console.print(table)
    console.print(stats_table(stats))
    return 0


def data_stats(args: argparse.Namespace) -> int:
    from pretrain.data.stats import shard_stats

    stats = shard_stats(args.dir, checksum=not args.no_checksum)
    if args.json:
        _print_json(stats)
    else:
        console.print(stats_table(stats))
        for problem in stats["problems"]:
            console.print(f"[red]FAILED[/red] {problem}", soft_wrap=True)  # paths stay whole
        if not stats["problems"]:
            what = "sha256 and size" if stats["checksums_verified"] else "size"
            console.print(f"every shard matches its manifest ({what})")
    return 1 if stats["problems"] else 0


def quickstart(args: argparse.Namespace) -> int:
    from pretrain.quickstart import run_quickstart

    summary = run_quickstart(args.out, minutes=args.minutes, workers=args.workers)
    console.print(stats_table(summary["stats"]))
    console.rule("sample")
    console.print(summary["sample"], markup=False, highlight=False)
    console.rule()
    train, result = summary["train"], summary["eval"]
    losses = [r["loss"] for r in read_metrics(summary["run"]) if r["split"] == "train"]
    table = Table(title="quickstart")
    table.add_column("")
    table.add_column("result")
    table.add_row("tokenizer", summary["tokenizer"])
    table.add_row("shards", summary["shards"])
    table.add_row("run", summary["run"])
    table.add_row("steps / tokens", f"{train['step']} / {train['tokens']:,}")
    if losses:
        table.add_row("train loss", f"{losses[0]:.3f} -> {losses[-1]:.3f}")
    table.add_row(
        "val loss / bits per byte", f"{result['loss']:.3f} / {result['bits_per_byte']:.3f}"
    )
    table.add_row("loss curve", summary["plot"])
    table.add_row("total time", f"{summary['seconds'] / 60:.1f} min")
    console.print(table)
    return 0


def train(args: argparse.Namespace) -> int:
    from pretrain.config import ExperimentConfig, load_config
    from pretrain.train.checkpoint import list_steps
    from pretrain.train.trainer import Trainer

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    if args.print_config:
        from pretrain.config import to_yaml

        print(to_yaml(cfg.validate()), end="")  # a config that would be refused is not shown
        return 0
    resume = args.resume == "latest" or (
        args.resume == "auto" and bool(list_steps(Path(cfg.run.dir) / "checkpoints"))
    )
    summary = Trainer(cfg, resume=resume).fit()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 0
    table = Table(title=f"trained {cfg.model.family} ({cfg.model.size}) -> {cfg.run.dir}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("steps", str(summary["step"]))
    table.add_row("tokens", f"{summary['tokens']:,}")
    table.add_row("time", f"{summary['seconds']:.1f} s")
    if summary["val"]:
        table.add_row("val loss", f"{summary['val']['loss']:.4f}")
        bpb = summary["val"]["bits_per_byte"]
        table.add_row("val bits/byte", "n/a" if bpb is None else f"{bpb:.4f}")
        for name, task in summary["val"].get("downstream", {}).items():
            table.add_row(f"{name}: few-shot accuracy", f"{task['accuracy']:.4f}")
    nonfinite = summary["skipped_steps"] - summary["spike_steps"]
    if nonfinite:
        table.add_row("skipped steps (non-finite)", str(nonfinite))
    if summary["spike_steps"]:
        table.add_row("skipped steps (spikes)", str(summary["spike_steps"]))
    if summary.get("rollbacks"):
        table.add_row("rollbacks (spikes)", str(summary["rollbacks"]))
    console.print(table)
    return 0


def eval_run(args: argparse.Namespace) -> int:
    from pretrain.eval.run_eval import evaluate_run

    result = evaluate_run(args.run, args.checkpoint, args.data, args.max_batches)
    if args.json:
        _print_json(result)
        return 0
    table = Table(title=f"{args.run} ({result['checkpoint']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("val loss", f"{result['loss']:.4f}")
    table.add_row("perplexity", f"{result['perplexity']:.2f}")
    bpb = result["bits_per_byte"]
    table.add_row("bits per byte", "n/a" if bpb is None else f"{bpb:.4f}")
    if result["accuracy"] is not None:
        table.add_row("accuracy", f"{result['accuracy']:.4f}")
    table.add_row("tokens evaluated", f"{result['tokens']:,}")
    for task, stats in result.get("tasks", {}).items():  # mixtures and UL2: per task
        loss = "n/a" if stats["loss"] is None else f"{stats['loss']:.4f}"
        table.add_row(f"loss {task}", f"{loss} ({stats['tokens']:,} tokens)")
    console.print(table)
    return 0


def export(args: argparse.Namespace) -> int:
    if args.finetuned is not None:
        from pretrain.export_classifier import export_classifier_hf

        if args.checkpoint is not None:
            raise ValueError("--checkpoint applies to --run; --finetuned holds one classifier")
        out = export_classifier_hf(args.finetuned, args.out, overwrite=args.overwrite)
        console.print(f"exported {args.finetuned} to {out} (Hugging Face format)")
        return 0
    from pretrain.export import export_hf

    checkpoint = args.checkpoint or "latest"
    out = export_hf(args.run, args.out, checkpoint, overwrite=args.overwrite)
    console.print(f"exported {args.run} to {out} (Hugging Face format)")
    return 0


def finetune(args: argparse.Namespace) -> int:
    from pretrain.eval.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_len=args.max_len,
        seed=args.seed,
        random_init=args.random_init,
        text_key=args.text_key,
        label_key=args.label_key,
        device=args.device,
        precision=args.precision,
    )
    summary = finetune(
        args.run, args.train, args.val, args.out, settings, args.checkpoint, args.overwrite
    )
    if args.json:
        _print_json(summary)
        return 0
    table = Table(title=f"fine-tuned {summary['checkpoint']} -> {args.out}")
    for column in ("epoch", "train loss", "val loss", "val accuracy"):
        table.add_column(column, justify="right")
    for e in summary["epochs"]:
        best = " (kept)" if e["epoch"] == summary["best_epoch"] else ""
        row = (e["train_loss"], e["val_loss"], e["val_accuracy"])
        table.add_row(f"{e['epoch']}{best}", *(f"{v:.4f}" for v in row))
    console.print(table)
    console.print(f"majority-label accuracy on val: {summary['val_majority_accuracy']:.4f}")
    return 0


def few_shot(args: argparse.Namespace) -> int:
    from pretrain.atomic import atomic_write_text
    from pretrain.config import FewShotTaskConfig
    from pretrain.eval.few_shot import few_shot_eval

    task = FewShotTaskConfig(
        train=list(args.train),
        eval=list(args.eval),
        template=args.template.replace("\\n", "\n").replace("\\t", "\t"),
        answers=_label_words(args.answer),
        choices_key=args.choices_key,
        shots=args.shots,
        max_examples=args.max_examples,
        seed=args.seed,
        text_key=args.text_key,
        label_key=args.label_key,
    )
    summary = few_shot_eval(args.run, task, args.checkpoint, args.batch_size, args.device)
    predictions = summary.pop("predictions")
    if args.predictions:
        lines = "".join(json.dumps(p) + "\n" for p in predictions)
        atomic_write_text(args.predictions, lines)
    if args.json:
        _print_json(summary)
        return 0
    console.print(f"first prompt ({summary['shots']} shots asked):\n{summary['first_prompt']}\n")
    table = Table(title=f"{summary['shots']}-shot, {summary['examples']} examples")
    table.add_column("answer chosen by")
    table.add_column("accuracy", justify="right")
    table.add_column("answers given", justify="left")
    for metric, key, name in (
        ("raw", "accuracy", "log-likelihood"),
        ("per_char", "accuracy_per_char", "log-likelihood per character"),
        ("calibrated", "accuracy_calibrated", "calibrated (minus the premise's)"),
    ):
        given = sorted(summary["predicted"][metric].items())
        # by word for a classification, else by the choice's index
        counts = ", ".join(f"{k if summary['choices'] else '#' + k} {v}" for k, v in given)
        table.add_row(name, f"{summary[key]:.4f}", counts)
    table.add_row("(the majority label)", f"{summary['majority_accuracy']:.4f}", "")
    table.add_row("(chance)", f"{summary['chance_accuracy']:.4f}", "")
    console.print(table)
    if summary["fewer_shots"] or summary["truncated"]:
        console.print(
            f"{summary['fewer_shots']} examples got fewer shots than asked to fit "
            f"train.seq_len (mean {summary['mean_shots']:.2f}); {summary['truncated']} were cut"
        )
    return 0


def _label_words(pairs: list[str] | None) -> dict[str, str] | None:
    """``["0=negative", "1=positive"]`` as ``{"0": "negative", "1": "positive"}``."""
    if pairs is None:
        return None
    words: dict[str, str] = {}
    for pair in pairs:
        label, sep, word = pair.partition("=")
        if not sep or not label or not word:
            raise ValueError(f"--answer: write LABEL=WORD, got {pair!r}")
        if label in words:
            raise ValueError(f"--answer: label {label!r} is given twice")
        words[label] = word
    return words
