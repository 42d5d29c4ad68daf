"""Few-shot answer scoring: ``decoder_log_likelihoods`` against a Hugging Face model scored
in a plain loop, on the same requests, in the same process.

The plain loop (lm-evaluation-harness's ``loglikelihood`` without its optimizations) runs a
right-padded row per request through the model and takes ``log_softmax`` of the logits at
every position. Ours projects onto the vocabulary only the rows that predict an answer, and
scores the one-token answers to one prompt from one row (lm-evaluation-harness's HF backend
has grouping of its own, which the plain loop does not reproduce: the ratios are against the
plain loop). Requests are shaped like few-shot prompts: contexts of 100 to 250 tokens, two
answers each, random ids (the weights are random too: the time does not depend on them).

    python bench/bench_few_shot.py                       # the quickstart's tiny decoder
    python bench/bench_few_shot.py --size gpt2-small --requests 64

This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from machine import cpu_model, git_commit, usable_cores
from pretrain.eval.choice_scoring import decoder_log_likelihoods
from pretrain.models.decoder import DecoderLM
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.hf import to_hf


def requests(
    n: int, vocab: int, answer_tokens: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Two answers of 1 to ``answer_tokens`` tokens to each of ``n / 2`` contexts."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n // 2):
        context = torch.randint(300, vocab, (int(torch.randint(100, 251, (1,), generator=g)),))
        for _ in range(2):
            length = int(torch.randint(1, answer_tokens + 1, (1,), generator=g))
            out.append((context.tolist(), torch.randint(300, vocab, (length,)).tolist()))
    return out


@torch.inference_mode()
def harness_scores(hf, reqs: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """The plain loop: a row per request, log-softmax over every position's logits."""
    scores = []
    for start in range(0, len(reqs), batch_size):
        batch = reqs[start : start + batch_size]
        rows = [c + a for c, a in batch]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        log_probs = F.log_softmax(hf(input_ids=ids, attention_mask=mask).logits, dim=-1)
        for i, (context, answer) in enumerate(batch):
            positions = torch.arange(len(context) - 1, len(context) - 1 + len(answer))
            scores.append(float(log_probs[i, positions, answer].sum()))
    return scores


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=usable_cores())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DecoderLM(decoder_config(args.size, args.vocab)).eval()
    hf = to_hf(model).eval()
    print(
        f"commit {git_commit()}, {cpu_model()}, {args.threads} threads, torch "
        f"{torch.__version__}; {args.size} decoder ({model.cfg.style}, "
        f"{model.num_params() / 1e6:.1f}M parameters, vocabulary {args.vocab}); "
        f"{args.requests} requests of contexts of 100 to 250 tokens, batches of "
        f"{args.batch_size}; median of {args.repeats}"
    )
    print("\n| answers | HF, plain loop: s | pretrain: s | ratio | largest difference |")
    print("|---|---:|---:|---:|---:|")
    for answer_tokens, name in ((1, "one token (classification)"), (3, "1 to 3 tokens")):
        reqs = requests(args.requests, args.vocab, answer_tokens)
        ours_s, ours = timed(
            lambda r=reqs: decoder_log_likelihoods(model, r, batch_size=args.batch_size),
            args.repeats,
        )
        hf_s, theirs = timed(lambda r=reqs: harness_scores(hf, r, args.batch_size), args.repeats)
        worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
        print(f"| {name} | {hf_s:.3f} | {ours_s:.3f} | {hf_s / ours_s:.2f} | {worst:.1e} |")


if __name__ == "__main__":
    main()
