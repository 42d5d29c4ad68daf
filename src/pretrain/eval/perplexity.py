"""Validation loss, perplexity and bits per byte.

Bits per byte (tokenizer-independent, as in Gao et al. 2020, The Pile, §4.1) is the summed
cross-entropy in nats over predicted tokens divided by ``ln 2`` times the UTF-8 bytes those
tokens stand for. With a byte-level BPE every token is a fixed byte string, so the byte count
of each prediction target is exact (special tokens such as EOS count 0 bytes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from pretrain.data.loader import TokenBatch
from pretrain.distributed import comm
from pretrain.losses import cross_entropy_by_task
from pretrain.objectives.base import IGNORE_INDEX, ModelBatch


def rounds(
    batches: Iterable[TokenBatch], world_size: int, max_batches: int | None = None
) -> Iterator[list[tuple[int, TokenBatch]]]:
    """``(index, batch)`` pairs, ``world_size`` at a time (the last round may be short)."""
    group: list[tuple[int, TokenBatch]] = []
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        group.append((i, batch))
        if len(group) == world_size:
            yield group
            group = []
    if group:
        yield group


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    objective: Callable[[TokenBatch], ModelBatch],
    batches: Iterable[TokenBatch],
    token_bytes: torch.Tensor | None,
    device: torch.device,
    max_batches: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    accuracy: bool = False,
    rank: int = 0,
    world_size: int = 1,
    counts: bool = True,
    forward: Callable[[ModelBatch], torch.Tensor | None] | None = None,
) -> dict[str, Any]:
    """Average loss over every label token of (up to ``max_batches``) ``batches``.

    With ``accuracy`` it also reports the share of label tokens whose most likely token is the
    label (MLM accuracy, as reported for BERT-style models).

    Under ``torchrun`` every rank passes the same ``batches`` and evaluates every
    ``world_size``-th of them (batch ``i`` on rank ``i % world_size``); the sums are then added
    over ranks, so each rank returns the result of one process reading all batches, in
    ``1 / world_size`` of the time. Ranks run forwards in lockstep rounds (FSDP gathers weights
    inside the forward, a collective): in a short last round, a rank without a batch of its
    own runs the round's first batch and counts nothing. ``rank`` and ``world_size`` are
    data-parallel: the ranks of a tensor-parallel group pass the same ``rank`` and run the
    same batches, and all but its first pass ``counts=False``, which leaves their sums out.
    ``forward`` computes the final hidden states in place of ``model(batch)``: a pipeline's
    stages all run it, and only the last gets them (the others get None and count nothing).
    """
    was_training = model.training
    model.eval()
    nats, tokens, num_bytes, correct = 0.0, 0, 0, 0
    per_task: dict[str, list] = {}  # task -> [nats, label tokens], when examples record one
    for group in rounds(batches, world_size, max_batches):
        own = rank < len(group)
        i, token_batch = group[rank] if own else group[0]
        # Objectives that corrupt their input (MLM) draw the same corruption for batch i at
        # every evaluation and on any number of ranks, so evaluations compare like with like.
        generator = torch.Generator().manual_seed(i)
        cpu_batch = objective(token_batch, generator)
        groups = cpu_batch.loss_groups(device)
        batch = cpu_batch.to(device)
        with autocast():
            hidden = model(batch) if forward is None else forward(batch)
        if not own or hidden is None:
            continue
        for name, rows, _, count, ce in cross_entropy_by_task(
            hidden,
            batch.labels,
            groups,
            model.output_weight,
            output_bias=getattr(model, "output_bias", None),
        ):  # one group unless examples record their task
            nats += float(ce)
            tokens += int(count)
            if rows is not None:
                sums = per_task.setdefault(name, [0.0, 0])
                sums[0] += float(ce)
                sums[1] += int(count)
        if accuracy:
            correct += _num_correct(model, hidden, batch.labels)
        if token_bytes is not None:
            labels = batch.labels[batch.labels != IGNORE_INDEX]
            num_bytes += int(token_bytes.to(labels.device)[labels].sum())
    model.train(was_training)
    if comm.active():  # every rank of the job: some may count nothing (a pipeline's first)
        if not counts:
            nats, tokens, num_bytes, correct, per_task = 0.0, 0, 0, 0, {}
        nats, tokens, num_bytes, correct = _sum_over_ranks(
            [nats, tokens, num_bytes, correct], device
        )
        per_task = merge_task_sums(comm.gather_objects(per_task))
    if tokens == 0:
        raise ValueError("evaluation saw no label tokens (is the val split empty?)")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nats / math.log(2) / num_bytes if num_bytes else None,
        "tokens": tokens,
        "bytes": num_bytes,
        "accuracy": correct / tokens if accuracy else None,
        **({"tasks": task_losses(per_task)} if per_task else {}),
    }


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float | int]:
    """Each value summed over ranks (float64: exact for counts); counts come back as ints."""
    total = comm.all_reduce_sum(torch.tensor(values, dtype=torch.float64), device).tolist()
    return [total[0], *(int(round(v)) for v in total[1:])]


def merge_task_sums(per_rank: list[dict[str, list]]) -> dict[str, list]:
    """``{task: [ce sum, label tokens]}`` of every rank, added up."""
    merged: dict[str, list] = {}
    for per_task in per_rank:
        for name, (ce, count) in per_task.items():
            sums = merged.setdefault(name, [0.0, 0])
            sums[0] += ce
            sums[1] += count
    return merged


def task_losses(per_task: dict[str, list]) -> dict[str, dict[str, Any]]:
    """``{task: {"loss": mean cross-entropy, "tokens": label tokens}}`` from summed values."""
    out = {}
    for name, (ce, count) in sorted(per_task.items()):
        tokens = int(count)
        out[name] = {"loss": float(ce) / tokens if tokens else None, "tokens": tokens}
    return out


def _num_correct(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> int:
    """Label tokens whose argmax prediction is right, projecting 1024 rows at a time."""
    rows = labels != IGNORE_INDEX
    h, y = hidden[rows], labels[rows]
    correct = 0
    for start in range(0, len(y), 1024):
        logits = model.logits(h[start : start + 1024])  # (n, V)
        correct += int((logits.argmax(dim=-1) == y[start : start + 1024]).sum())
    return correct
