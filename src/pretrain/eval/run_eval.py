"""``pretrain eval``: evaluate a run's checkpoint on the val split of a shard directory."""

from __future__ import annotations

import os
from typing import Any

import torch

from pretrain.data.loader import TokenLoader
from pretrain.eval.perplexity import evaluate
from pretrain.objectives import build_objective, loader_seq_len
from pretrain.runs import load_run
from pretrain.tokenizer import token_byte_lengths


def evaluate_run(
    run_dir: str | os.PathLike,
    checkpoint: str = "latest",
    data: str | None = None,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of ``checkpoint`` on ``data`` (default: the run's val).

    Every window of the val split is evaluated unless ``max_batches`` limits it.
    """
    run = load_run(run_dir, checkpoint)
    cfg = run.config
    data = data or cfg.data.val
    if not data:
        raise ValueError(f"{run_dir}: the run has no data.val; pass --data DIR")
    objective = build_objective(
        cfg.objective, run.tokenizer, cfg.train.seq_len, family=cfg.model.family
    )
    loader = TokenLoader(
        data,
        loader_seq_len(objective, cfg.train.seq_len),
        cfg.eval.batch_size or cfg.train.micro_batch_size,
        split="val",
        shuffle=False,
        num_epochs=1,
        tokenizer_hash=run.tokenizer.hash,
    )
    lengths = token_byte_lengths(run.tokenizer) if objective.reports_bits_per_byte else None
    token_bytes = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    result = evaluate(
        run.model,
        objective,
        loader,
        token_bytes,
        torch.device("cpu"),
        max_batches,
        accuracy=objective.reports_accuracy,
    )
    result["objective"] = objective.name
    result["checkpoint"] = run.checkpoint.name
    result["step"] = run.step
    result["data"] = str(data)
    return result
