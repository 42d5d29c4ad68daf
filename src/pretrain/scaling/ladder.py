"""A ladder of small runs from one base config, run one after another, final val losses in one
CSV: the data an Approach 3 (or, with ``--isoflop``, Approach 2) fit needs.

Two designs (Hoffmann et al. 2022, §3.1-3.2):

* sizes x tokens-per-parameter: each size trains on ``r * N`` tokens for each ratio r;
* IsoFLOP: each size trains on ``C / (6 N)`` tokens for each budget C.

N is the total parameter count, embeddings included (Chinchilla's convention); the CSV also
records the non-embedding count. Each run's cosine/WSD schedule spans its own ``max_steps``, as
Chinchilla App. B requires (a cycle overshooting the run by > 25% biases the loss). A run whose
directory already holds ``ladder_result.json`` is not run again, so an interrupted ladder
continues where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretrain.config import ExperimentConfig, load_config
from pretrain.scaling.counts import count_config
from pretrain.scaling.flops import training_flops

log = logging.getLogger(__name__)

RESULT_FILE = "ladder_result.json"
CSV_COLUMNS = (
    "name",
    "size",
    "params",
    "non_embedding_params",
    "tokens",
    "flops",
    "flops_with_attention",
    "steps",
    "tokens_per_param",
    "loss",
    "run_dir",
)
_SHAPE = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?$")


@dataclasses.dataclass
class LadderRun:
    """One rung: its overrides on the base config and what it will spend."""

    name: str
    size: str
    overrides: list[str]
    params: int
    non_embedding_params: int
    flops_per_token: float
    tokens: int
    steps: int
    run_dir: str
    loss: float | None = None

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "params": self.params,
            "non_embedding_params": self.non_embedding_params,
            "tokens": self.tokens,
            "flops": training_flops(self.params, self.tokens),
            "flops_with_attention": self.flops_per_token * self.tokens,
            "steps": self.steps,
            "tokens_per_param": self.tokens / self.params,
            "loss": self.loss,
            "run_dir": self.run_dir,
        }


def size_overrides(size: str) -> list[str]:
    """``debug``/``tiny``/...: a named size; ``LxD`` or ``LxDxH``: layers, width (and heads)."""
    m = _SHAPE.match(size)
    if m is None:
        return [f"--model.size={size}"]
    out = [f"--model.n_layers={m.group(1)}", f"--model.d_model={m.group(2)}"]
    if m.group(3):
        out.append(f"--model.n_heads={m.group(3)}")
    return out


def _vocab_size(cfg: ExperimentConfig, default: int) -> int:
    if cfg.data.tokenizer and Path(cfg.data.tokenizer).exists():
        from pretrain.tokenizer import Tokenizer

        return Tokenizer.load(cfg.data.tokenizer).vocab_size
    return default


def plan_ladder(
    base_config: str | None,
    sizes: Sequence[str],
    *,
    tokens_per_param: Sequence[float] = (),
    isoflop: Sequence[float] = (),
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    vocab_size: int = 32768,
) -> list[LadderRun]:
    """The runs of a ladder, in order (smallest compute first), without running anything.

    Raises:
        ValueError: without exactly one of ``tokens_per_param`` and ``isoflop``, or for a
            rung too small for one optimizer step.
    """
    if bool(tokens_per_param) == bool(isoflop):
        raise ValueError("give either --tokens-per-param or --isoflop (not both)")
    base = load_config(ExperimentConfig, base_config, list(overrides))
    if base.model.n_experts:
        raise ValueError(
            f"model.n_experts={base.model.n_experts}: a ladder fits Chinchilla's law, made for "
            "dense models; a mixture of experts scales by its own (Clark et al. 2022, "
            "'Unified Scaling Laws for Routed Language Models'), which is not built here"
        )
    root = Path(out_dir or base.run.dir)
    vocab = _vocab_size(base, vocab_size)
    batch = base.train.tokens_per_batch
    runs = []
    for size in sizes:
        size_args = size_overrides(size)
        cfg = load_config(ExperimentConfig, base_config, [*overrides, *size_args])
        counts = count_config(cfg.model, vocab, cfg.train.seq_len)
        budgets = (
            [(f"r{r:g}", r * counts.total) for r in tokens_per_param]
            if tokens_per_param
            else [(f"C{c:.2g}", c / (6.0 * counts.total)) for c in isoflop]
        )
        for tag, tokens in budgets:
            steps = max(1, round(tokens / batch))
            if tokens < batch / 2:
                log.warning(
                    "%s %s: %.3g tokens is under one batch; running 1 step", size, tag, tokens
                )
            name = f"{size}-{tag}".replace("+", "")
            run_dir = str(root / name)
            warmup = min(base.optim.warmup_steps, steps // 5)
            rung = [
                *size_args,
                f"--train.max_steps={steps}",
                f"--optim.warmup_steps={warmup}",
                f"--run.dir={run_dir}",
            ]
            runs.append(
                LadderRun(
                    name,
                    size,
                    rung,
                    counts.total,
                    counts.non_embedding,
                    counts.flops_per_token,
                    steps * batch,
                    steps,
                    run_dir,
                )
            )
    return sorted(runs, key=lambda r: r.params * r.tokens)


def run_ladder(
    base_config: str | None,
    runs: Sequence[LadderRun],
    overrides: Sequence[str] = (),
    results_csv: str | Path | None = None,
    only: str | None = None,
) -> list[LadderRun]:
    """Train each rung with :class:`~pretrain.train.trainer.Trainer`; write ``results_csv``
    after every run. The loss is the final validation loss (``data.val`` must be set).

    A rung already trained (by an earlier call, or by a cluster job running ``--only NAME``)
    is read back, not retrained. With ``only``, just the rung of that name may be trained;
    the others are read back if done and keep no loss if not."""
    from pretrain.train.trainer import Trainer

    for run in runs:
        done = Path(run.run_dir) / RESULT_FILE
        if done.exists():
            run.loss = json.loads(done.read_text())["loss"]
            log.info("%s: done before (loss %.4f)", run.name, run.loss)
        elif only is not None and run.name != only:
            log.info("%s: not trained yet", run.name)
        else:
            cfg = load_config(ExperimentConfig, base_config, [*overrides, *run.overrides])
            if not cfg.data.val:
                raise ValueError("the ladder needs data.val: its result is the final val loss")
            summary = Trainer(cfg).fit()
            val = summary["val"] or {}
            run.loss = val.get("loss", math.nan)
            done.write_text(json.dumps(run.row(), indent=2) + "\n")
            log.info("%s: %d steps, val loss %.4f", run.name, run.steps, run.loss)
        if results_csv is not None:
            write_csv(runs, results_csv)
    return list(runs)


def write_csv(runs: Sequence[LadderRun], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for run in runs:
            writer.writerow(run.row())
