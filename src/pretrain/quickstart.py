"""``pretrain quickstart``: the whole path on a bundled public-domain corpus, on this machine.

1. train a byte-level BPE tokenizer on the bundled text (Shakespeare and three novels),
2. tokenize it into verified train/val shards,
3. train a ``tiny`` Llama-style decoder with causal LM for ``--minutes`` (CPU, or the GPU when
   there is one): a short calibration measures the step time so the cosine schedule ends
   when the time does. The minutes are the training's own; the steps before it (about half
   a minute on 2 cores) and the evaluation after it come on top,
4. evaluate it on the val split, print a generated sample and a summary, and write the loss
   curve to ``plots/loss.png``.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ExperimentConfig, load_config
from pretrain.data.stats import shard_stats
from pretrain.data.tokenize import tokenize_to_shards
from pretrain.tokenizer import train_tokenizer_from_files
from pretrain.train.cpu_precision import cpu_has_native_bf16

log = logging.getLogger(__name__)

QUICKSTART_VOCAB_SIZE = 4096
QUICKSTART_VAL_FRACTION = 0.05
SAMPLE_PROMPT = "ROMEO:"


def bundled_corpus() -> Path:
    """The public-domain corpus shipped in the package (assets/LICENSE-quickstart.md)."""
    return Path(str(resources.files("pretrain") / "assets" / "quickstart.jsonl.gz"))


def quickstart_config(out: Path, max_steps: int, minutes: float) -> ExperimentConfig:
    gpu = torch.cuda.is_available()
    precision = "auto" if gpu or not cpu_has_native_bf16() else "bf16"
    overrides = [
        f"--train.precision={precision}",
        "--model.size=tiny",
        f"--data.train=[{out / 'shards'}]",
        f"--data.val={out / 'shards'}",
        f"--data.tokenizer={out / 'tokenizer'}",
        "--optim.lr=2e-3",
        f"--optim.warmup_steps={max(1, min(30, max_steps // 10))}",
        "--train.seq_len=256",
        f"--train.micro_batch_size={32 if gpu else 16}",
        f"--train.tokens_per_batch={8192 if gpu else 4096}",
        f"--train.max_steps={max_steps}",
        f"--train.max_minutes={minutes}",
        f"--eval.every_steps={max(1, max_steps // 5)}",
        "--eval.max_batches=10",
        f"--checkpoint.every_steps={max(1, max_steps // 2)}",
        "--checkpoint.keep_last=1",
        f"--log.every_steps={max(1, max_steps // 50)}",
        f"--run.dir={out / 'run'}",
    ]
    return load_config(ExperimentConfig, None, overrides)


def _seconds_per_step(out: Path) -> float:
    """The median time of three training steps of the quickstart model on the real shards
    (after one warm-up): one step slowed by something else on the machine does not cut the
    run's step budget."""
    from pretrain.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = quickstart_config(out, max_steps=100, minutes=1.0)
        cfg.run.dir = str(Path(tmp) / "calibration")
        cfg.log.tensorboard = False
        trainer = Trainer(cfg)
        trainer.train_step()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        trainer.metrics.close()
        return statistics.median(times)


def run_quickstart(out: str | Path, minutes: float = 5.0, workers: int = 2) -> dict[str, Any]:
    """Run every stage; return a summary for the closing table."""
    from pretrain.eval.run_eval import evaluate_run
    from pretrain.generate import generate
    from pretrain.runs import load_run
    from pretrain.train.plots import plot_losses
    from pretrain.train.trainer import Trainer

    if not minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    out = Path(out)
    if (out / "run").exists():
        log.warning("replacing the earlier quickstart run in %s", out / "run")
        shutil.rmtree(out / "run")
    corpus = bundled_corpus()
    started = time.perf_counter()

    log.info("1/4 training a %d-entry BPE tokenizer on %s", QUICKSTART_VOCAB_SIZE, corpus.name)
    tokenizer, _ = train_tokenizer_from_files([str(corpus)], QUICKSTART_VOCAB_SIZE)
    tokenizer_dir = tokenizer.save(out / "tokenizer")

    log.info("2/4 tokenizing into train/val shards (%.0f%% val)", 100 * QUICKSTART_VAL_FRACTION)
    shards_dir = out / "shards"
    tokenize_to_shards(
        tokenizer_dir,
        [str(corpus)],
        shards_dir,
        val_fraction=QUICKSTART_VAL_FRACTION,
        workers=workers,
        overwrite=True,
    )
    stats = shard_stats(shards_dir)
    if stats["problems"]:
        raise RuntimeError(
            "freshly written shards failed verification: " + "; ".join(stats["problems"])
        )

    step_seconds = _seconds_per_step(out)
    max_steps = max(1, int(0.92 * 60 * minutes / step_seconds))  # leave time for the evals
    log.info(
        "3/4 training a tiny decoder for %.1f minutes (~%d steps of %.2f s)",
        minutes,
        max_steps,
        step_seconds,
    )
    cfg = quickstart_config(out, max_steps, minutes=minutes)
    summary = Trainer(cfg).fit()

    log.info("4/4 evaluating, sampling and plotting")
    result = evaluate_run(cfg.run.dir, "latest")
    run = load_run(cfg.run.dir)
    prompt = run.tokenizer.encode(SAMPLE_PROMPT)
    ids = generate(
        run.model,
        torch.tensor(prompt),
        max_new_tokens=120,
        temperature=0.8,
        top_k=50,
        eos_id=run.tokenizer.special.eos,
        generator=torch.Generator().manual_seed(0),
    )
    sample = SAMPLE_PROMPT + run.tokenizer.decode(ids[len(prompt) :].tolist())
    plot = plot_losses(Path(cfg.run.dir))
    (Path(cfg.run.dir) / "samples.txt").write_text(sample + "\n")
    return {
        "tokenizer": str(tokenizer_dir),
        "shards": str(shards_dir),
        "run": cfg.run.dir,
        "stats": stats,
        "train": summary,
        "eval": result,
        "sample": sample,
        "plot": str(plot),
        "seconds": time.perf_counter() - started,
    }
