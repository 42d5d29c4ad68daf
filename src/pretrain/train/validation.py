"""The validation split during training: its loader and the ``metrics.jsonl`` line of an
evaluation (DESIGN.md §4: ``split: val`` with ``bits_per_byte``)."""

from __future__ import annotations

from typing import Any

from pretrain.config import ExperimentConfig
from pretrain.data.loader import TokenLoader


def open_val_loader(
    cfg: ExperimentConfig, seq_len: int, checksum: bool, tokenizer_hash: str
) -> TokenLoader:
    """``data.val`` read once in order, in windows of the training's ``seq_len``."""
    return TokenLoader(
        cfg.data.val,
        seq_len,
        cfg.eval.batch_size or cfg.train.micro_batch_size,
        split="val",
        shuffle=False,
        num_epochs=1,
        checksum=checksum,
        tokenizer_hash=tokenizer_hash,
    )


def val_record(result: dict[str, Any], step: int, lr: float, tokens: int) -> dict[str, Any]:
    """The line to log for :func:`pretrain.eval.perplexity.evaluate`'s ``result`` at ``step``."""
    record = {"step": step, "split": "val", "lr": lr, "tokens": tokens}
    record.update({k: result[k] for k in ("loss", "perplexity", "bits_per_byte")})
    if result["accuracy"] is not None:
        record["accuracy"] = result["accuracy"]
    record["tokens_evaluated"] = result["tokens"]
    if "tasks" in result:
        record["tasks"] = result["tasks"]
    return record
