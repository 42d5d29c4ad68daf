"""The objective -> model contract: :class:`ModelBatch` and :class:`AttentionSpec` (DESIGN.md §3).

An objective turns a :class:`~pretrain.data.loader.TokenBatch` into a ``ModelBatch``: the
model inputs, the labels (``IGNORE_INDEX`` where there is nothing to predict) and a
description of who may attend to whom. Models turn the description into a mask; objectives
never build masks themselves, so one description serves the SDPA path on CPU and
FlexAttention on GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Indices into ``labels.reshape(-1)`` where there is a label (not ``IGNORE_INDEX``)."""
    return torch.nonzero(labels.reshape(-1) != IGNORE_INDEX).squeeze(1)


def to_device(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    """``t`` on ``device`` without making the host wait for the work queued there.

    A copy to CUDA from ordinary (pageable) host memory may wait for the device; from pinned
    memory with ``non_blocking`` it is queued like a kernel. So a host tensor bound for CUDA
    is pinned first (PyTorch's caching host allocator keeps the pinned block until the copy
    is done). Elsewhere, a plain ``to``.
    """
    if t is None:
        return None
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        # Contiguous first: pinning keeps a strided view's strides (a window's [:, :-1]),
        # and PyTorch stages a strided copy through pageable memory again.
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


AttentionKind = Literal["causal", "bidirectional", "prefix", "permutation"]


@dataclass(frozen=True)
class AttentionSpec:
    """Who may attend to whom.

    Attributes:
        kind: ``causal`` (position i sees j <= i), ``bidirectional`` (all), ``prefix``
            (bidirectional inside the first ``prefix_lengths[b]`` positions, causal after),
            ``permutation`` (XLNet's ``perm_mask``: i may NOT see j, given densely as
            ``permutation_mask`` or compactly as ``query_rank``/``key_rank``).
        document_ids: ``(B, T)``; when given, a position only sees positions of the same
            document (packed sequences never attend across documents).
        prefix_lengths: ``(B,)`` for ``kind == "prefix"``.
        permutation_mask: ``(B, T, T)`` bool for ``kind == "permutation"``: True where i may
            NOT see j.
        query_rank, key_rank: ``(B, T)`` int64, the same rule without a ``T x T`` tensor: i may
            NOT see j exactly when ``query_rank[b, i] <= key_rank[b, j]`` (see
            :func:`pretrain.objectives.plm.permutation_ranks`). A kernel that takes a mask rule
            (FlexAttention) reads these; :func:`permutation_allowed` expands them.
        query_positions, key_positions: ``(Tq,)`` and ``(Tk,)`` int64, the sequence positions
            of a call's queries and keys when they are not ``0..T-1`` in order: a
            context-parallel rank's share of the queries, attending to the keys gathered from
            every rank (:mod:`pretrain.distributed.context_parallel`). The rule is the same,
            read at those positions: ``document_ids`` and ``prefix_lengths`` describe the
            whole sequence. None: ``0..T-1``.
    """

    kind: AttentionKind = "causal"
    document_ids: torch.Tensor | None = None
    prefix_lengths: torch.Tensor | None = None
    permutation_mask: torch.Tensor | None = None
    query_rank: torch.Tensor | None = None
    key_rank: torch.Tensor | None = None
    query_positions: torch.Tensor | None = None
    key_positions: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> AttentionSpec:
        return AttentionSpec(
            self.kind,
            to_device(self.document_ids, device),
            to_device(self.prefix_lengths, device),
            to_device(self.permutation_mask, device),
            to_device(self.query_rank, device),
            to_device(self.key_rank, device),
            to_device(self.query_positions, device),
            to_device(self.key_positions, device),
        )

    def permutation_allowed(self) -> torch.Tensor:
        """``(B, T, T)`` bool, True where i may see j, for ``kind == "permutation"``.

        Raises:
            ValueError: when neither ``permutation_mask`` nor both ranks are given.
        """
        if self.permutation_mask is not None:
            return ~self.permutation_mask.bool()
        if self.query_rank is None or self.key_rank is None:
            raise ValueError(
                "attention kind 'permutation' needs permutation_mask (B, T, T) or "
                "query_rank and key_rank (B, T)"
            )
        return self.query_rank[:, :, None] > self.key_rank[:, None, :]


@dataclass(frozen=True)
class ModelBatch:
    """What a model consumes; fields a family does not use stay ``None``."""

    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, IGNORE_INDEX where no loss
    attention: AttentionSpec
    position_ids: torch.Tensor | None = None  # (B, T); None means 0..T-1
    decoder_input_ids: torch.Tensor | None = None  # encoder-decoder families
    target_mapping: torch.Tensor | None = None  # XLNet
    objective: str = "clm"
    task_ids: torch.Tensor | None = None
    """``(B,)`` index into ``task_names`` of what made each example (a UL2 denoiser, a mixture
    component), so the loss can be reported per task; None: the whole batch is ``objective``."""
    task_names: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> ModelBatch:
        """The batch on ``device``, each tensor copied with :func:`to_device`."""
        return ModelBatch(
            input_ids=to_device(self.input_ids, device),
            labels=to_device(self.labels, device),
            attention=self.attention.to(device),
            position_ids=to_device(self.position_ids, device),
            decoder_input_ids=to_device(self.decoder_input_ids, device),
            target_mapping=to_device(self.target_mapping, device),
            objective=self.objective,
            task_ids=to_device(self.task_ids, device),
            task_names=self.task_names,
        )

    def loss_groups(
        self, device: torch.device | str | None = None
    ) -> list[tuple[str, torch.Tensor | None, torch.Tensor]]:
        """``(task name, example rows, label positions)`` per task present, or one
        ``(objective, None, label positions)`` for a batch that records no tasks.

        The label positions index the flattened labels of those rows
        (``labels[rows].reshape(-1)``, or ``labels.reshape(-1)``) where there is a label. Call
        it where the objective made the batch (the CPU), with the ``device`` the loss runs
        on: the loss then picks its rows without asking the device how many labels there
        are (which waits for the forward), and the copies are queued (:func:`to_device`).
        """
        if self.task_ids is None:
            groups = [(self.objective, None, label_positions(self.labels))]
        else:
            groups = []
            for t in sorted(set(self.task_ids.tolist())):
                rows = torch.nonzero(self.task_ids == t).squeeze(1)
                groups.append((self.task_names[t], rows, label_positions(self.labels[rows])))
        if device is None:
            return groups
        return [
            (name, to_device(rows, device), to_device(where, device))
            for name, rows, where in groups
        ]

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def noised_windows(
    batch_tokens: torch.Tensor, generator: torch.Generator | None, length: int, what: str
) -> torch.Tensor:
    """``batch_tokens`` ``(B, length)`` for an objective that draws noise per example.

    Raises:
        ValueError: without a generator (the draw must be seeded and new per example), or when
            the loader's windows are not ``length`` tokens (``what`` names the objective and
            the setting the length comes from).
    """
    if generator is None:
        raise ValueError(f"{what} draws new noise per example: pass a torch.Generator")
    if batch_tokens.shape[1] != length:
        raise ValueError(f"{what} needs windows of {length} tokens, got {batch_tokens.shape[1]}")
    return batch_tokens


def encoder_decoder_batch(
    inputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    pad_id: int | None,
    decoder_start_id: int,
    objective: str,
    dtype: torch.dtype,
    inputs_length: int | None = None,
    targets_length: int | None = None,
    task_ids: torch.Tensor | None = None,
    task_names: tuple[str, ...] = (),
) -> ModelBatch:
    """The encoder-decoder ModelBatch for per-example ``inputs`` and ``targets`` (1-D each).

    Inputs are right-padded with ``pad_id`` to ``inputs_length``, targets (the labels) with
    ``IGNORE_INDEX`` to ``targets_length`` (None: the longest row). The decoder input is the
    labels shifted right behind ``decoder_start_id``, ``IGNORE_INDEX`` read as ``pad_id``; the
    encoder attends bidirectionally. ``task_ids``/``task_names`` pass through (UL2).

    Raises:
        ValueError: when ``pad_id`` is None (an objective whose rows never need padding) and a
            row is shorter than its width.
    """
    B = len(inputs)
    widths = []
    for rows, length in ((inputs, inputs_length), (targets, targets_length)):
        width = max((len(r) for r in rows), default=0) if length is None else length
        if pad_id is None and any(len(r) != width for r in rows):
            raise ValueError(f"rows of {sorted({len(r) for r in rows})} tokens need a pad_id")
        widths.append(width)
    input_ids = torch.full((B, widths[0]), 0 if pad_id is None else pad_id, dtype=dtype)
    labels = torch.full((B, widths[1]), IGNORE_INDEX, dtype=dtype)
    for b, (row_in, row_out) in enumerate(zip(inputs, targets, strict=True)):
        input_ids[b, : len(row_in)] = row_in
        labels[b, : len(row_out)] = row_out
    start = torch.full((B, 1), decoder_start_id, dtype=dtype)
    shifted = torch.cat([start, labels[:, :-1]], dim=1)
    if pad_id is not None:
        shifted = shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)
    return ModelBatch(
        input_ids=input_ids,
        labels=labels,
        attention=AttentionSpec("bidirectional"),
        decoder_input_ids=shifted,
        objective=objective,
        task_ids=task_ids,
        task_names=task_names,
    )
