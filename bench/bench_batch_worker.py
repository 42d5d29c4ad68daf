"""What a step's batches cost the training process: drawn in place, or taken from the worker.

For each objective at the GPU reference shape (32 x 512 by default; the bundled corpus and a
tokenizer trained on it, as ``bench_train_loop.py`` makes them), in the same run:
- ``draw``: ``objective(next(loader), generator)`` in this process, as ``data.batch_worker=none``
  does between steps;
- ``take``: ``WorkerStepBatches.take()`` once the worker has had time to draw ahead (this
  process sleeps between takes), which is what ``data.batch_worker=process`` costs the trainer.

Medians over ``--repeats`` (after two warm-up calls). A benchmark, not a test.

    python bench/bench_batch_worker.py [--objectives plm,span,bart,mlm,clm] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench_train_loop import prepare_data
from machine import git_commit
from pretrain.config import ObjectiveConfig
from pretrain.tokenizer import Tokenizer
from pretrain.train.batch_worker import BatchSource, WorkerStepBatches

FAMILY = {
    "clm": "decoder",
    "mlm": "encoder",
    "span": "encoder_decoder",
    "bart": "encoder_decoder",
    "ul2": "encoder_decoder",
    "plm": "xlnet",
}


def median_ms(seconds: list[float]) -> float:
    return round(1e3 * statistics.median(seconds), 2)


def measure(name: str, tokenizer_dir: Path, shards: Path, args) -> dict:
    source = BatchSource(
        train=(str(shards),),
        micro_batch_size=args.batch,
        seq_len=args.seq_len,
        tokenizer_dir=str(tokenizer_dir),
        objective=ObjectiveConfig(name=name),
        family=FAMILY[name],
    )
    objective, loader = source.build(Tokenizer.load(tokenizer_dir), checksum=False)
    generator = torch.Generator().manual_seed(0)
    start = (loader.state_dict(), generator.get_state())
    draws = []
    for i in range(args.repeats + 2):
        t = time.perf_counter()
        objective(next(loader), generator)
        if i >= 2:
            draws.append(time.perf_counter() - t)
    worker = WorkerStepBatches(source, lambda: start, per_step=1)
    takes = []
    try:
        for i in range(args.repeats + 2):
            time.sleep(args.pause)  # the worker refills its queue meanwhile
            t = time.perf_counter()
            worker.take()
            if i >= 2:
                takes.append(time.perf_counter() - t)
    finally:
        worker.close()
    return {"objective": name, "draw_ms": median_ms(draws), "take_ms": median_ms(takes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", default="clm,mlm,span,bart,ul2,plm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--pause", type=float, default=0.1, help="seconds between takes")
    p.add_argument("--work", default="bench/out/train_loop")
    args = p.parse_args()
    torch.set_num_threads(1)
    tokenizer_dir, shards = prepare_data(Path(args.work), 32000)
    print(f"commit {git_commit()}, batch {args.batch} x {args.seq_len}, one thread")
    for name in args.objectives.split(","):
        print(json.dumps(measure(name, tokenizer_dir, shards, args)), flush=True)


if __name__ == "__main__":
    main()
