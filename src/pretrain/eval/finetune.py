"""``pretrain finetune``: fine-tune a run's model as a text classifier and report accuracy.

The recipe is BERT's for GLUE (Devlin et al. 2019, §4.1 and appendix A.3): every weight
trains, with a new linear head on the pooled features (:mod:`pretrain.eval.classifier`),
AdamW (beta2 0.999, weight decay 0.01), a learning rate warmed up over the first 10% of the
steps and decayed linearly to zero, a few epochs, and the epoch with the best validation
accuracy kept. ``random_init`` trains the same network from fresh weights: the baseline
that says what pretraining bought.

Everything is seeded (the head, the order of the examples), so a run repeats exactly on a
CPU. The output directory is written whole or not at all: ``classifier.safetensors`` (the
best epoch's weights), ``finetune.json`` (labels, settings, per-epoch results) and
``metrics.jsonl`` (one line per epoch).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from pretrain.atomic import fresh_partial_dir, refuse_occupied, replace_dir
from pretrain.eval.classifier import SequenceClassifier
from pretrain.eval.labeled_data import LabeledExamples, read_labeled
from pretrain.optim import build_optimizer, lr_at
from pretrain.runs import load_run
from pretrain.tokenizer import Tokenizer
from pretrain.train.cpu_precision import warn_if_bf16_is_emulated
from pretrain.train.device_setup import autocast_context, autocast_dtype, resolve_device

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.safetensors"
SUMMARY_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    max_len: int | None = None
    """Tokens per example at most (the text is cut); None: the run's ``train.seq_len``."""
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    random_init: bool = False
    text_key: str = "text"
    label_key: str = "label"
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto`` (CUDA where there is one)."""
    precision: str = "auto"
    """``bf16``: forward and backward under bf16 autocast, weights and AdamW in fp32 (as
    ``train.precision``); ``fp32``; ``auto``: bf16 on CUDA, fp32 elsewhere."""

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.max_len is not None and self.max_len < 2:
            raise ValueError(f"--max-len must be >= 2, got {self.max_len}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")


def finetune(
    run_dir: str | os.PathLike,
    train: list[str],
    val: list[str],
    out: str | os.PathLike,
    settings: FinetuneSettings | None = None,
    checkpoint: str = "latest",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` of ``run_dir`` on ``train``, choose the epoch by ``val``.

    Returns the summary written to ``out/finetune.json``.

    Raises:
        ValueError: bad settings or data (naming the file and line), an ``out`` that holds
            files without ``overwrite``, or a model family without a classifier (XLNet).
    """
    settings = settings or FinetuneSettings()
    settings.check()
    out = Path(out).resolve()
    refuse_occupied(out, overwrite)
    device = resolve_device(settings.device)
    dtype = autocast_dtype(settings.precision, device)  # None: fp32
    warn_if_bf16_is_emulated(device, dtype, "precision")
    run = load_run(run_dir, checkpoint, device=str(device))
    train_data = read_labeled(train, settings.text_key, settings.label_key)
    val_data = read_labeled(val, settings.text_key, settings.label_key, train_data.label_names)
    family = run.config.model.family
    torch.manual_seed(settings.seed)  # the head, and fresh weights for the baseline
    if settings.random_init:
        run.model.init_weights()
    model = SequenceClassifier(
        run.model, family, len(train_data.label_names), run.tokenizer.special.pad
    ).to(device)
    max_len = settings.max_len or run.config.train.seq_len
    train_ids = encode(train_data, run.tokenizer, max_len, family)
    val_ids = encode(val_data, run.tokenizer, max_len, family)
    log.info(
        "fine-tuning %s (step %d, %s) on %d examples, %d labels; validating on %d",
        run.checkpoint,
        run.step,
        family,
        len(train_ids),
        len(train_data.label_names),
        len(val_ids),
    )
    epochs, best_state = _train(
        model, train_ids, train_data.labels, val_ids, val_data, settings, dtype
    )
    best = max(epochs, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    majority = max(val_data.labels.count(i) for i in set(val_data.labels)) / len(val_ids)
    summary = {
        "run": str(Path(run_dir).resolve()),
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "family": family,
        "label_names": train_data.label_names,
        "num_train": len(train_ids),
        "num_val": len(val_ids),
        "settings": {
            **asdict(settings),
            "max_len": max_len,
            "precision": "fp32" if dtype is None else "bf16",
        },
        "epochs": epochs,
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "val_majority_accuracy": majority,
    }
    model.load_state_dict(best_state)
    _write(out, model, summary, epochs)
    return summary


def encode(
    data: LabeledExamples, tokenizer: Tokenizer, max_len: int, family: str
) -> list[list[int]]:
    """Token ids per example, cut to ``max_len``; a decoder's end in EOS (its pooled token)."""
    ids = tokenizer.encode_batch(data.texts)
    if family == "decoder":
        eos = tokenizer.special.eos
        return [row[: max_len - 1] + [eos] for row in ids]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise ValueError(f"example {empty[0]} has no tokens: its text is empty")
    return [row[:max_len] for row in ids]


def _train(
    model: SequenceClassifier,
    train_ids: list[list[int]],
    labels: list[int],
    val_ids: list[list[int]],
    val_data: LabeledExamples,
    s: FinetuneSettings,
    autocast: torch.dtype | None,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    device = model.head.weight.device
    steps_per_epoch = math.ceil(len(train_ids) / s.batch_size)
    total = s.epochs * steps_per_epoch
    optimizer = build_optimizer(model, s.lr, s.weight_decay, (0.9, 0.999), 1e-8)
    warmup = int(s.warmup_fraction * total)
    order = torch.Generator().manual_seed(s.seed)
    epochs: list[dict[str, Any]] = []
    best_key, best_state = None, None
    step = 0
    for epoch in range(1, s.epochs + 1):
        model.train()
        loss_sum = 0.0
        for batch in torch.randperm(len(train_ids), generator=order).split(s.batch_size):
            lr = lr_at(
                step,
                schedule="linear",
                peak_lr=s.lr,
                warmup_steps=warmup,
                max_steps=total,
                min_lr_ratio=0.0,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = padded([train_ids[i] for i in batch.tolist()], model.pad_id)
            y = torch.tensor([labels[i] for i in batch.tolist()])
            x, y = x.to(device), y.to(device)
            with autocast_context(device, autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(batch)
            step += 1
        val_loss, accuracy = evaluate(model, val_ids, val_data.labels, s.batch_size, autocast)
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / len(train_ids),
            "val_loss": val_loss,
            "val_accuracy": accuracy,
        }
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f",
            epoch,
            record["train_loss"],
            val_loss,
            accuracy,
        )
        epochs.append(record)
        key = (accuracy, -val_loss)
        if best_key is None or key > best_key:
            best_key, best_state = key, copy.deepcopy(model.state_dict())
    assert best_state is not None
    return epochs, best_state


@torch.no_grad()
def evaluate(
    model: SequenceClassifier,
    ids: list[list[int]],
    labels: list[int],
    batch_size: int,
    autocast: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over the examples, in order (under
    autocast to ``autocast``, if given)."""
    model.eval()
    device = model.head.weight.device
    loss_sum, correct = 0.0, 0
    for start in range(0, len(ids), batch_size):
        x = padded(ids[start : start + batch_size], model.pad_id)
        y = torch.tensor(labels[start : start + batch_size])
        x, y = x.to(device), y.to(device)
        with autocast_context(device, autocast):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=-1) == y).sum())
    return loss_sum / len(ids), correct / len(ids)


def padded(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, longest) ids, right-padded with ``pad_id``."""
    tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
    return pad_sequence(tensors, batch_first=True, padding_value=pad_id)


def _write(
    out: Path, model: SequenceClassifier, summary: dict[str, Any], epochs: list[dict]
) -> None:
    """``out`` whole or not at all: written beside it, then renamed."""
    from safetensors.torch import save_model

    partial = fresh_partial_dir(out)
    save_model(model, str(partial / CLASSIFIER_FILE))  # tied weights stored once
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (partial / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    replace_dir(partial, out)
