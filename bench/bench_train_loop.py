"""Tokens/s of the trainer's own loop (``pretrain train``) at a benchmark's shape.

``bench_train_gpu.py`` times a bare step on batches made before the timing starts. This runs
the real loop instead: the loader reading shards, the objective drawing each batch on the
host, the step, logging. Data: the bundled quickstart corpus, with a tokenizer trained on it
(the first run makes both under ``--work``; later runs reuse them). The figure is the median
of the ``tokens_per_second`` the trainer logs after ``--skip`` steps (compile and warmup).

    python bench/bench_train_loop.py --config configs/xlnet-plm.yaml --size base \\
        --seq-len 512 --batch 32 --steps 40 -- --model.attention_backend=flex
    python bench/bench_train_loop.py --config configs/tiny-clm.yaml --size debug \\
        --seq-len 64 --batch 4 --steps 8 --skip 2     # a CPU smoke run

Arguments after ``--`` are passed to ``pretrain train`` as overrides. Evaluation is off and the
only checkpoint is the final one. This is a benchmark, not a test.

It also says where the host's time goes in each step (medians after ``--skip``): queuing the
step (``Trainer.queue_step``), within it taking the step's batches (from the worker process,
``data.batch_worker``, or drawn before) and drawing the next step's in the training process
(with ``data.batch_worker=none``), and waiting for the device to finish the step before
(``PendingSums.result``). A wait near zero means the host is the bottleneck: the device
finishes each step before the host has queued the next one. ``gc`` counts Python's garbage
collections during the timed steps by generation, their milliseconds per step and the longest
(``train.gc_every_steps``); ``gc_before`` the same for setting up and the first ``--skip``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from machine import git_commit
from pretrain.cli import main as pretrain_main
from pretrain.data.tokenize import tokenize_to_shards
from pretrain.quickstart import bundled_corpus
from pretrain.tokenizer import train_tokenizer_from_files
from pretrain.train.batch_worker import WorkerStepBatches
from pretrain.train.metrics import read_metrics
from pretrain.train.step_batches import StepBatches
from pretrain.train.step_sums import PendingSums
from pretrain.train.trainer import Trainer


def timed(cls: type, name: str, seconds: list[float]) -> None:
    """Wrap ``cls.name`` so each call appends its wall time to ``seconds``."""
    real = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    setattr(cls, name, wrapper)


class GcPauses:
    """Python's garbage collections during the run: when, which generation, how long."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []  # (start, generation, seconds)
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            seconds = time.perf_counter() - self._start
            self.pauses.append((self._start, info["generation"], seconds))

    def summary(self, since: float, until: float, steps: int) -> dict:
        """Collections that started between ``since`` and ``until``: ``steps`` steps."""
        kept = [(gen, s) for start, gen, s in self.pauses if since <= start < until]
        by_gen = {gen: [s for g, s in kept if g == gen] for gen in (0, 1, 2)}
        return {
            "collections": {gen: len(v) for gen, v in by_gen.items()},
            "ms_by_generation": {gen: round(1e3 * sum(v), 1) for gen, v in by_gen.items()},
            "ms_per_step": round(1e3 * sum(s for _, s in kept) / max(1, steps), 3),
            "longest_ms": round(1e3 * max((s for _, s in kept), default=0.0), 2),
        }


def median_ms(seconds: list[float], skip: int) -> float | None:
    kept = seconds[skip:]
    return round(1e3 * statistics.median(kept), 2) if kept else None


def prepare_data(work: Path, vocab_size: int) -> tuple[Path, Path]:
    """Tokenizer and shards of the bundled corpus under ``work`` (made once)."""
    tokenizer_dir, shards = work / f"tokenizer_{vocab_size}", work / f"shards_{vocab_size}"
    if not (tokenizer_dir / "tokenizer.json").exists():
        tokenizer, _ = train_tokenizer_from_files([str(bundled_corpus())], vocab_size=vocab_size)
        tokenizer.save(tokenizer_dir)
    if not (shards / "manifest.json").exists():
        tokenize_to_shards(tokenizer_dir, [str(bundled_corpus())], shards, val_fraction=0.0)
    return tokenizer_dir, shards


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--size", required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="micro-batch = batch (no accumulation)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="first steps left out of the median")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--work", default="bench/out/train_loop")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.work)
    tokenizer_dir, shards = prepare_data(work, args.vocab)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time
    overrides = [
        f"--model.size={args.size}", f"--data.train=[{shards}]", "--data.val=null",
        f"--data.tokenizer={tokenizer_dir}", f"--run.dir={run}",
        f"--train.seq_len={args.seq_len}", f"--train.micro_batch_size={args.batch}",
        f"--train.tokens_per_batch={args.batch * args.seq_len}",
        f"--train.max_steps={args.steps}", f"--optim.warmup_steps={min(10, args.steps)}",
        f"--train.compile={'false' if args.no_compile else 'true'}",
        "--eval.every_steps=0", f"--checkpoint.every_steps={args.steps}",
        "--log.every_steps=1", "--log.progress=false", "--log.tensorboard=false",
        "--log.sample_tokens=0",
    ]  # fmt: skip
    host = {"queue_step": [], "take_batches": [], "draw_ahead": [], "wait_for_device": []}
    timed(Trainer, "queue_step", host["queue_step"])
    timed(StepBatches, "take", host["take_batches"])
    timed(WorkerStepBatches, "take", host["take_batches"])
    timed(StepBatches, "draw_ahead", host["draw_ahead"])
    timed(PendingSums, "result", host["wait_for_device"])  # the first call waits, later are cached
    gc_pauses, queued_at = GcPauses(), []
    queue_step = Trainer.queue_step
    Trainer.queue_step = lambda self: (queue_step(self), queued_at.append(time.perf_counter()))[0]
    code = pretrain_main(["train", "--config", args.config, *overrides, *extra])
    if code != 0:
        raise SystemExit(f"pretrain train exited with {code}")
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    rates = [r["tokens_per_second"] for r in records[args.skip :]]
    mfus = [r["mfu"] for r in records[args.skip :] if r.get("mfu") is not None]
    vocab = json.loads((run / "model_config.json").read_text()).get("vocab_size")
    result = {
        "commit": git_commit(),
        "vocab_size": vocab,  # the tokenizer's, which may stop short of --vocab on this corpus
        "config": args.config,
        "size": args.size,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "overrides": extra,
        "steps_timed": len(rates),
        "tokens_per_second": statistics.median(rates) if rates else None,
        "mfu": statistics.median(mfus) if mfus else None,
        "first_loss": records[0]["loss"],
        "host_ms_per_step": {name: median_ms(v, args.skip) for name, v in host.items()},
    }
    if 0 < args.skip < len(queued_at):
        # the timed steps: from the end of queuing step --skip to that of the last step
        start = queued_at[args.skip - 1]
        result["gc_before"] = gc_pauses.summary(0.0, start, args.skip)  # setting up too
        result["gc"] = gc_pauses.summary(start, queued_at[-1], len(queued_at) - args.skip - 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
