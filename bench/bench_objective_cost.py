"""Host time each objective takes to turn one token batch into a ModelBatch, on one core.

The trainer draws a step's micro-batches on the host while the device still runs the step
before (``StepBatches.draw_ahead``); the GPU benchmarks (``bench_train_gpu.py``) make their
batches before timing. This shows what that drawing costs per batch at the GPU reference
shape (32 x 512 by default), against the time a GPU step takes.

    python bench/bench_objective_cost.py                   # 32 x 512, every objective
    python bench/bench_objective_cost.py --batch 8 --seq-len 256

The tokenizer (for the special token ids the objectives need) is trained on the bundled
quickstart corpus first (a few seconds). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from machine import cpu_model, git_commit
from pretrain.config import ObjectiveConfig
from pretrain.data.loader import TokenBatch
from pretrain.objectives import build_objective, loader_seq_len
from pretrain.quickstart import bundled_corpus
from pretrain.tokenizer import train_tokenizer_from_files

# objective: the family it is built for (UL2 draws other batches for decoder-only models)
OBJECTIVES = {
    "clm": "decoder",
    "prefix_lm": "decoder",
    "mlm": "encoder",
    "span": "encoder_decoder",
    "bart": "encoder_decoder",
    "ul2": "encoder_decoder",
    "plm": "xlnet",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, _ = train_tokenizer_from_files([str(bundled_corpus())], vocab_size=8192)
        tokenizer.save(tmp)
    print(
        f"commit {git_commit()}, {cpu_model()}, 1 thread, torch {torch.__version__}, "
        f"batch {args.batch} x {args.seq_len}, median of {args.repeats}"
    )
    print("\n| objective | window | ms per batch |\n|---|---:|---:|")
    for name in args.objectives.split(","):
        objective = build_objective(
            ObjectiveConfig(name=name), tokenizer, args.seq_len, family=OBJECTIVES[name]
        )
        window = loader_seq_len(objective, args.seq_len) + 1
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(300, tokenizer.vocab_size, (args.batch, window), generator=g)
        documents = torch.zeros_like(tokens)
        documents[:, window // 2 :] = 1  # two documents per window
        ids = torch.arange(args.batch)
        token_batch = TokenBatch(tokens, documents, ids * 0, ids)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            objective(token_batch, g)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {window} | {1000 * statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
