"""``pretrain scaling flops|plan|fit|ladder``: compute accounting, run planning, the scaling-law
fit and a ladder of small runs (arguments, tables and JSON only; the work is in ``scaling/``).

pretrain scaling flops --config X.yaml [--set KEY=VALUE ...] [--gpu H100 --tokens-per-second T]
pretrain scaling flops --params N --tokens D [--json]
pretrain scaling plan --compute C | --params N | --tokens D [--gpu H100 --mfu 0.4] [--json]
pretrain scaling fit RESULTS.csv [--bootstrap B] [--plots DIR] [--strict] [--json]
pretrain scaling ladder --config BASE.yaml --sizes S1 S2 (--tokens-per-param R,.. | --isoflop C,..)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
from pathlib import Path
from typing import Any

from rich.table import Table

from pretrain.console import console

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (e.g. 10,20), got {text!r}"
        ) from None


def _key_value(text: str) -> str:
    """``--set``'s argument, refused by argparse (naming ``--set``) unless it is KEY=VALUE."""
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. model.size=debug), got {text!r}"
        )
    return text


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Register ``pretrain scaling`` and its subcommands."""
    scaling = commands.add_parser("scaling", help="FLOPs, compute-optimal planning, fits, ladders")
    sub = scaling.add_subparsers(dest="action", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="experiment YAML (defaults apply without one)")
        p.add_argument(
            "--set",
            action="append",
            type=_key_value,
            default=[],
            metavar="KEY=VALUE",
            help="config override, e.g. --set model.size=debug (repeatable)",
        )

    def gpu_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gpu", default="H100", help="A100, H100, H200, ... (dense bf16 peak)")
        p.add_argument("--peak-flops", type=float, help="peak FLOP/s per GPU (overrides --gpu)")

    fl = sub.add_parser("flops", help="parameters, FLOPs per token/step/run, MFU")
    config_args(fl)
    fl.add_argument("--params", type=float, help="parameters N (with --tokens: C = 6ND)")
    fl.add_argument("--tokens", type=float, help="training tokens D (default: the config's)")
    fl.add_argument(
        "--attention",
        choices=["palm", "kaplan", "none"],
        default="palm",
        help="attention FLOPs: palm 12LHQT, kaplan 6LHQT (causal), none (6N)",
    )
    fl.add_argument("--vocab-size", type=int, help="default: the config's tokenizer's, or 32768")
    fl.add_argument("--tokens-per-second", type=float, help="measured throughput per GPU: MFU")
    gpu_args(fl)
    fl.add_argument("--json", action="store_true")

    pl = sub.add_parser("plan", help="compute-optimal N and D, loss, shape, batch, LR, wall time")
    pl.add_argument("--compute", type=float, help="training FLOPs budget")
    pl.add_argument("--params", type=float, help="model size N (total parameters)")
    pl.add_argument("--tokens", type=float, help="training tokens D")
    pl.add_argument("--tokens-per-param", type=float, default=20.0)
    pl.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilization")
    pl.add_argument("--num-gpus", type=int, default=1)
    pl.add_argument("--vocab-size", type=int, default=32768)
    pl.add_argument("--seq-len", type=int, default=2048)
    pl.add_argument("--no-shape", action="store_true", help="skip the model shape search")
    gpu_args(pl)
    pl.add_argument("--json", action="store_true")

    ft = sub.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to a results CSV")
    ft.add_argument("csv", help="columns: params/Model Size, tokens and/or flops, loss")
    ft.add_argument("--bootstrap", type=int, default=100, help="resamples for intervals (0: none)")
    ft.add_argument("--confidence", type=float, default=0.95)
    ft.add_argument(
        "--drop-highest",
        type=int,
        default=0,
        help="drop the K highest losses first (Epoch dropped 5)",
    )
    ft.add_argument(
        "--all-starts",
        action="store_true",
        help="run L-BFGS from all 4,500 grid starts (slow) instead of the best 24",
    )
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--plots", help="directory for loss_vs_flops.png and isoflop.png")
    ft.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first row that is not a point (default: skip it and say so)",
    )
    ft.add_argument("--json", action="store_true")

    ld = sub.add_parser("ladder", help="run a sweep of small runs; final val losses to a CSV")
    config_args(ld)
    ld.add_argument(
        "--sizes",
        nargs="+",
        required=True,
        help="named sizes (debug tiny) or LAYERSxWIDTH[xHEADS] shapes, e.g. 2x64",
    )
    ld.add_argument("--tokens-per-param", type=_floats, default=[], help="ratios, e.g. 10,20")
    ld.add_argument("--isoflop", type=_floats, default=[], help="FLOP budgets, e.g. 1e15,3e15")
    ld.add_argument("--out", help="ladder directory (default: the config's run.dir)")
    ld.add_argument("--vocab-size", type=int, default=32768, help="when there is no tokenizer")
    ld.add_argument("--dry-run", action="store_true", help="print the plan only")
    ld.add_argument(
        "--only", help="train just this rung (one cluster job); the others are left as they are"
    )
    ld.add_argument(
        "--commands",
        action="store_true",
        help="print one command per rung (this command with --only NAME) for a job scheduler; "
        "rerun without --only afterwards to collect the CSV",
    )
    ld.add_argument("--json", action="store_true")


def _refuse_unless_positive(args: argparse.Namespace, *flags: str) -> None:
    """Refuse, naming the flag, a value given that is not a positive finite number (for an
    integer flag: less than 1), before any work: 0, a negative, inf or nan would end in a
    division by zero, a math domain error or an overflow deep in the arithmetic, or in a
    negative count printed as if it were one."""
    for flag in flags:
        value = getattr(args, flag[2:].replace("-", "_"))
        for v in value if isinstance(value, list) else [value]:
            if v is None:
                continue
            if isinstance(v, int):
                if v < 1:
                    raise ValueError(f"{flag} must be at least 1, got {v}")
            elif not (math.isfinite(v) and v > 0):
                raise ValueError(f"{flag} must be a positive finite number, got {v:g}")


def _refuse_negative(args: argparse.Namespace, *flags: str) -> None:
    """Refuse, naming the flag, a negative value of an integer flag for which 0 means none."""
    for flag in flags:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 0:
            raise ValueError(f"{flag} must be 0 or more, got {value}")


def _peak(args: argparse.Namespace) -> float:
    """Peak FLOP/s per GPU: ``--peak-flops``, else ``--gpu`` (a name or a number)."""
    from pretrain.scaling.flops import gpu_peak_flops

    _refuse_unless_positive(args, "--peak-flops")
    if args.peak_flops is not None:
        return args.peak_flops
    peak = gpu_peak_flops(args.gpu)
    if not (math.isfinite(peak) and peak > 0):
        raise ValueError(
            f"--gpu must name a GPU (A100, H100, ...) or give its peak FLOP/s as a positive "
            f"finite number (e.g. 989e12), got {args.gpu}"
        )
    return peak


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))


def _table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def _objective_count(cfg: Any, attention: str, uniform_per_token: float, tokens: float):
    """How ``flops`` is counted, as ``--attention`` says, and the trainer's own count per input
    token (:mod:`pretrain.scaling.batch_flops`) where it differs from ``6N + 12LHQT``: masked
    LM, encoder-decoder and XLNet objectives run part of their tokens through part of the
    weights. That count needs the tokenizer (``data.tokenizer``), and is the ``palm`` one."""
    from pretrain.scaling.batch_flops import objective_flops_per_token
    from pretrain.scaling.flops import formula
    from pretrain.tokenizer import Tokenizer

    counted = f"{formula(attention)} per token, N = matmul"
    if cfg.model.family == "decoder" and cfg.objective.name == "clm":
        if attention == "palm":
            return {"flops_counted_as": f"{counted} (causal LM; the trainer's count)"}
        return {
            "flops_counted_as": f"{counted} (causal LM; the trainer counts 6N + 12LHQT, "
            "--attention palm)"
        }
    tokenizer_dir = cfg.data.tokenizer
    if attention != "palm":
        return {
            "flops_counted_as": f"{counted}, as if every token passed every weight; the trainer "
            f"counts {cfg.objective.name} batches' own FLOPs (--attention palm, data.tokenizer)"
        }
    if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
        return {
            "flops_counted_as": f"{counted}, as if every token passed every weight; give "
            "data.tokenizer for this objective's own count (what the trainer's MFU uses)"
        }
    per_token = objective_flops_per_token(cfg, Tokenizer.load(tokenizer_dir))
    return {
        "flops_counted_as": f"{cfg.objective.name} batches per input token (the trainer's count; "
        "the tokenizer's vocabulary)",
        "flops_per_token_6n_12lhqt": uniform_per_token,
        "flops_per_token": per_token,
        "flops": per_token * tokens,
    }


def scaling_flops(args: argparse.Namespace) -> int:
    """``flops`` is the count ``flops_counted_as`` names; ``flops_6nd`` is Chinchilla's ``C =
    6 N D`` with N = ``params`` (every parameter, as plan, ladder and fit count it), and
    ``flops_per_token_6n`` its per-token ``6 N``."""
    from pretrain.scaling.flops import PF_DAY, mfu, training_flops

    _refuse_unless_positive(args, "--params", "--tokens", "--vocab-size", "--tokens-per-second")
    peak = _peak(args) if args.tokens_per_second else None
    out: dict[str, Any] = {}
    if args.params is not None and (args.config is not None or args.set):
        raise ValueError("give the model either as --params or as --config/--set, not both")
    if args.params is not None:
        if args.tokens is None:
            raise ValueError("--params needs --tokens (or give --config)")
        n, d = args.params, args.tokens
        out.update(params=n, tokens=d, flops=training_flops(n, d))
        out["flops_per_token"] = training_flops(n, 1)
        out["flops_counted_as"] = "6N per token, N = --params (C = 6ND; no attention term)"
    else:
        from pretrain.config import ExperimentConfig, load_config
        from pretrain.scaling.counts import count_config
        from pretrain.scaling.ladder import _vocab_size

        cfg = load_config(ExperimentConfig, args.config, [f"--{s}" for s in args.set])
        vocab = args.vocab_size or _vocab_size(cfg, 32768)
        counts = count_config(cfg.model, vocab, cfg.train.seq_len, args.attention)
        tokens = args.tokens or cfg.train.max_steps * cfg.train.tokens_per_batch
        out.update(counts.to_dict())
        out.update(
            vocab_size=vocab,
            params=counts.total,
            tokens=tokens,
            tokens_per_step=cfg.train.tokens_per_batch,
            steps=tokens / cfg.train.tokens_per_batch,
            flops_per_step=counts.flops_per_token * cfg.train.tokens_per_batch,
            flops=counts.flops_per_token * tokens,
            flops_6nd=training_flops(counts.active, tokens),
            flops_per_token_6n=training_flops(counts.active, 1),
            flops_6nd_non_embedding=training_flops(counts.non_embedding, tokens),
            flops_6nd_counted_as="flops_per_token_6n x tokens, 6N with N = params (every "
            "parameter: Chinchilla's C, as plan, ladder and fit count it; a mixture of "
            "experts counts its active parameters, the k experts a token uses); "
            "flops_6nd_non_embedding: N = non_embedding (Kaplan's)",
        )
        out.update(_objective_count(cfg, args.attention, counts.flops_per_token, tokens))
    out["pf_days"] = out["flops"] / PF_DAY
    if peak is not None:
        out.update(peak_flops=peak, tokens_per_second=args.tokens_per_second)
        out["mfu"] = mfu(args.tokens_per_second, out["flops_per_token"], peak)
    if args.json:
        _print_json(out)
    else:
        _table("training FLOPs", [(k, v) for k, v in out.items() if not isinstance(v, dict)])
    return 0


def scaling_plan(args: argparse.Namespace) -> int:
    from pretrain.scaling.plan import methods_for, plan

    _refuse_unless_positive(args, "--compute", "--params", "--tokens", "--tokens-per-param")
    _refuse_unless_positive(args, "--num-gpus", "--vocab-size", "--seq-len")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {args.mfu:g}")
    peak = _peak(args)
    methods = methods_for(args.compute, args.params, args.tokens, args.tokens_per_param)
    out = plan(
        methods,
        gpu_peak=peak,
        mfu=args.mfu,
        num_gpus=args.num_gpus,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        with_shape=not args.no_shape,
    )
    if args.json:
        _print_json(out)
        return 0
    device = f"{args.peak_flops:.3g} FLOP/s" if args.peak_flops else args.gpu
    table = Table(title=f"plan ({args.num_gpus} x {device} at {args.mfu:.0%} MFU)")
    table.add_column("")
    for name in methods:
        table.add_column(name, justify="right")
    keys = [
        "params",
        "tokens",
        "compute",
        "tokens_per_param",
        "loss_chinchilla",
        "loss_epoch",
        "batch_tokens",
        "lr",
        "wall_days",
    ]
    for key in keys:
        table.add_row(key, *(f"{out[m][key]:,.4g}" for m in methods))
    if not args.no_shape:
        for key in ("n_layers", "d_model", "n_heads", "d_ff", "total_params"):
            table.add_row(f"shape.{key}", *(f"{out[m]['shape'][key]:,}" for m in methods))
    console.print(table)
    return 0


def scaling_fit(args: argparse.Namespace) -> int:
    from pretrain.scaling.fit import MIN_POINTS, fit_approach2, fit_approach3
    from pretrain.scaling.points import read_points

    _refuse_negative(args, "--bootstrap", "--drop-highest", "--seed")
    if args.bootstrap == 1:
        raise ValueError("--bootstrap must be 0 (no intervals) or at least 2, got 1")
    if not 0 < args.confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), e.g. 0.95, got {args.confidence:g}")
    points = read_points(args.csv, strict=args.strict)
    skipped = points.skipped_lines()
    for line in skipped:
        log.warning("%s: %s", args.csv, line)
    left = len(points) - args.drop_highest
    if left < MIN_POINTS:
        dropped = f", {left} after --drop-highest {args.drop_highest}" if args.drop_highest else ""
        raise ValueError(
            f"{args.csv}: {len(points)} usable rows{dropped}; the fit needs at least "
            f"{MIN_POINTS}" + "".join(f"; {line}" for line in skipped)
        )
    points = points.drop_highest_loss(args.drop_highest)
    fit = fit_approach3(
        points.params,
        points.tokens,
        points.loss,
        top_k=None if args.all_starts else 24,
        num_bootstrap=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
    )
    out = fit.to_dict()
    out["rows_skipped"] = points.skipped_report()
    try:
        approach2 = fit_approach2(points.params, points.flops, points.loss)
        out["approach2"] = approach2.to_dict()
    except ValueError as e:
        approach2, out["approach2"] = None, {"error": str(e)}
    if args.plots:
        from pretrain.scaling.plots import plot_isoflop, plot_loss_vs_flops

        out["plots"] = [str(plot_loss_vs_flops(points, fit.law, f"{args.plots}/loss_vs_flops.png"))]
        if approach2 is not None:
            out["plots"].append(str(plot_isoflop(approach2, f"{args.plots}/isoflop.png")))
    if args.json:
        _print_json(out)
        return 0
    title = f"Approach 3 fit on {fit.num_points} points"
    if n := len(points.skipped):
        title += f" ({n} CSV row{'s' if n > 1 else ''} skipped: see the warnings)"
    table = Table(title=title)
    for col in ("parameter", "estimate", f"{fit.confidence:.0%} interval"):
        table.add_column(col, justify="right")
    for name in ("E", "A", "B", "alpha", "beta"):
        lo_hi = fit.intervals.get(name)
        ci = f"({lo_hi[0]:.4g}, {lo_hi[1]:.4g})" if lo_hi else "-"
        table.add_row(name, f"{out[name]:.5g}", ci)
    table.add_row("a = beta/(alpha+beta)", f"{fit.law.a:.4f}", "")
    console.print(table)
    if approach2 is not None:
        console.print(f"Approach 2: N_opt ~ C^{approach2.a:.3f}, D_opt ~ C^{approach2.b:.3f}")
    else:
        console.print(f"Approach 2: no fit ({out['approach2']['error']})")
    return 0


def scaling_ladder(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pretrain.scaling.ladder import plan_ladder, run_ladder

    _refuse_unless_positive(args, "--tokens-per-param", "--isoflop", "--vocab-size")
    overrides = [f"--{s}" for s in args.set]
    runs = plan_ladder(
        args.config,
        args.sizes,
        tokens_per_param=args.tokens_per_param,
        isoflop=args.isoflop,
        overrides=overrides,
        out_dir=args.out,
        vocab_size=args.vocab_size,
    )
    if args.only is not None and args.only not in {r.name for r in runs}:
        raise ValueError(f"--only {args.only!r}: no such rung; rungs: {[r.name for r in runs]}")
    if args.commands:
        base = ["pretrain", "scaling", "ladder", "--sizes", *args.sizes]
        if args.config:
            base += ["--config", args.config]
        for key, values in (("--tokens-per-param", args.tokens_per_param),
                            ("--isoflop", args.isoflop)):  # fmt: skip
            if values:
                base += [key, ",".join(str(v) for v in values)]  # exact, as parsed
        for setting in args.set:
            base += ["--set", setting]
        if args.out:
            base += ["--out", args.out]
        base += ["--vocab-size", str(args.vocab_size)]
        for run in runs:
            print(shlex.join([*base, "--only", run.name]))
        return 0
    if not args.dry_run:
        root = Path(runs[0].run_dir).parent
        run_ladder(args.config, runs, overrides, results_csv=root / "ladder.csv", only=args.only)
    rows = [r.row() for r in runs]
    if args.json:
        _print_json({"runs": rows, "dry_run": args.dry_run})
        return 0
    table = Table(title="ladder (plan)" if args.dry_run else "ladder")
    cols = ("name", "params", "tokens", "flops", "steps", "loss")
    for col in cols:
        table.add_column(col, justify="right")
    for row in rows:
        loss = row["loss"]
        table.add_row(
            row["name"],
            f"{row['params']:,}",
            f"{row['tokens']:,}",
            f"{row['flops']:.3g}",
            str(row["steps"]),
            "-" if loss is None or math.isnan(loss) else f"{loss:.4f}",
        )
    console.print(table)
    return 0
