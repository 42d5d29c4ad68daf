"""A weighted mixture of objectives, drawn per example or per batch from the seeded generator.

Mixing pretraining tasks by rate is how T5 trained its multi-task mixtures (Raffel et al.
2020, §3.5.2, "examples-proportional" and fixed-rate mixing) and how UL2 mixes its denoisers
(Tay et al. 2022, §3.1.3); UL2 itself is one objective here (:mod:`.ul2`) and can also be a
component.

* ``granularity="example"``: each row of a loader batch is given to a component drawn with the
  weights; the components' rows are merged back in order, padded to the widest part (inputs
  and decoder inputs with the pad id, labels with ``IGNORE_INDEX``, document ids with -1 so
  padding is its own document). Causal and prefix attention merge as prefix attention (a
  causal row is a prefix of length 0).
* ``granularity="batch"``: one component makes the whole batch (shapes may differ between
  batches, never inside one).

The loader's window is the longest a component needs; a component with a shorter window takes
the first tokens of each window. Every example records its task (``ModelBatch.task_ids``),
so the trainer reports loss and token counts per component (and per UL2 denoiser).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import IGNORE_INDEX, AttentionSpec, ModelBatch

Granularity = Literal["example", "batch"]


def window_length(objective, seq_len: int) -> int:
    """Raw tokens per example ``objective`` needs from the loader (T+1 unless it says)."""
    window = getattr(objective, "window_length", None)
    return seq_len + 1 if window is None else window(seq_len)


def unique_names(names: list[str]) -> list[str]:
    """Component names that tell components apart: a name used more than once gets the
    component's place in the mixture (``mlm#0``, ``mlm#1``), so losses logged per component
    are not summed into, or overwritten by, another's."""
    repeated = {n for n in names if names.count(n) > 1}
    return [f"{n}#{i}" if n in repeated else n for i, n in enumerate(names)]


class ObjectiveMixture:
    """Components ``(name, objective, weight)`` drawn per example or per batch."""

    name = "mixture"
    families = ("decoder", "encoder", "encoder_decoder")  # each component is checked itself
    reports_bits_per_byte = False
    reports_accuracy = False

    def __init__(
        self,
        components: Sequence[tuple[str, object, float]],
        seq_len: int,
        pad_id: int,
        granularity: Granularity = "example",
    ):
        if not components:
            raise ValueError("objective.mixture: give at least one component")
        if granularity not in ("example", "batch"):
            raise ValueError(
                f"objective.mixture_granularity must be 'example' or 'batch', got {granularity!r}"
            )
        weights = [float(w) for _, _, w in components]
        if any(w <= 0 for w in weights):
            raise ValueError(f"objective.mixture: weights must be > 0, got {weights}")
        self.component_names = unique_names([n for n, _, _ in components])
        self.objectives = [o for _, o, _ in components]
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.seq_len, self.pad_id, self.granularity = seq_len, pad_id, granularity
        self.windows = [window_length(o, seq_len) for o in self.objectives]
        # Encoder-decoder components fix their decoder length; mixed per example, every batch
        # takes the longest, so shapes do not depend on which components a batch drew.
        lengths = [getattr(o, "targets_length", None) for o in self.objectives]
        self.decoder_length = max(lengths) if None not in lengths else None
        # Global task names: a component, or component/denoiser for UL2-like components.
        self.task_names: tuple[str, ...] = ()
        self.task_offsets = []
        for name, objective in zip(self.component_names, self.objectives, strict=True):
            self.task_offsets.append(len(self.task_names))
            subtasks = getattr(objective, "denoiser_names", ())
            self.task_names += tuple(f"{name}/{s}" for s in subtasks) or (name,)

    def window_length(self, seq_len: int) -> int:
        return max(self.windows)

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        if generator is None:
            raise ValueError("a mixture draws its components: pass a torch.Generator")
        B = batch.tokens.shape[0]
        if self.granularity == "batch":
            choice = torch.multinomial(self.weights, 1, generator=generator)
            ids = choice.expand(B)
        else:
            ids = torch.multinomial(self.weights, B, replacement=True, generator=generator)
        parts = []
        for c in sorted(set(ids.tolist())):
            rows = torch.nonzero(ids == c).squeeze(1)
            w = self.windows[c]
            sub = TokenBatch(
                batch.tokens[rows, :w],
                batch.document_ids[rows, :w],
                batch.source_ids[rows],
                batch.sample_ids[rows],
            )
            part = self.objectives[c](sub, generator)
            offset = self.task_offsets[c]
            local = part.task_ids if part.task_ids is not None else torch.zeros(len(rows))
            parts.append((rows, part, local.long() + offset))
        return self._merge(parts, B)

    def _merge(self, parts, B: int) -> ModelBatch:
        first = parts[0][1]
        for _, part, _ in parts:
            if part.target_mapping is not None or part.attention.kind == "permutation":
                raise ValueError("objective.mixture: permutation LM components cannot be mixed")
        input_ids = _stack(parts, "input_ids", self.pad_id, B)
        width = input_ids.shape[1]
        task_ids = torch.empty(B, dtype=torch.long)
        for rows, _, tasks in parts:
            task_ids[rows] = tasks
        return ModelBatch(
            input_ids=input_ids,
            labels=_stack(parts, "labels", IGNORE_INDEX, B, self._decoder_width(first)),
            attention=_merge_attention(parts, B, width),
            position_ids=_merge_positions(parts, B),
            decoder_input_ids=_stack(
                parts, "decoder_input_ids", self.pad_id, B, self._decoder_width(first)
            ),
            objective=first.objective if len(parts) == 1 else self.name,
            task_ids=task_ids,
            task_names=self.task_names,
        )

    def _decoder_width(self, part: ModelBatch) -> int | None:
        """The labels' width: the longest decoder of any component where examples mix them
        (encoder-decoder), else the batch's own (a decoder-only model's labels)."""
        if part.decoder_input_ids is None or self.granularity == "batch":
            return None
        return self.decoder_length


def _pad_rows(tensors, parts, fill, B: int, width: int | None = None) -> torch.Tensor:
    width = width or max(t.shape[1] for t in tensors)
    out = torch.full((B, width), fill, dtype=tensors[0].dtype)
    for (rows, _, _), t in zip(parts, tensors, strict=True):
        out[rows, : t.shape[1]] = t
    return out


def _stack(parts, field: str, fill: int, B: int, width: int | None = None) -> torch.Tensor | None:
    tensors = [getattr(part, field) for _, part, _ in parts]
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        names = sorted({part.objective for _, part, _ in parts})
        raise ValueError(
            f"objective.mixture: components {names} disagree on {field}; mix them with "
            "objective.mixture_granularity=batch"
        )
    return _pad_rows(tensors, parts, fill, B, width)


def _merge_positions(parts, B: int) -> torch.Tensor | None:
    """Position ids, where a part without them has the default ``0..T-1``."""
    if all(part.position_ids is None for _, part, _ in parts):
        return None
    tensors = []
    for rows, part, _ in parts:
        positions = part.position_ids
        if positions is None:
            positions = torch.arange(part.input_ids.shape[1]).expand(len(rows), -1)
        tensors.append(positions)
    return _pad_rows(tensors, parts, 0, B)


def _merge_attention(parts, B: int, width: int) -> AttentionSpec:
    kinds = {part.attention.kind for _, part, _ in parts}
    if len(kinds) > 1 and kinds != {"causal", "prefix"}:
        raise ValueError(
            f"objective.mixture: attention kinds {sorted(kinds)} cannot share a batch; use "
            "objective.mixture_granularity=batch"
        )
    kind = "prefix" if "prefix" in kinds else kinds.pop()
    docs = None
    if any(part.attention.document_ids is not None for _, part, _ in parts):
        tensors = [
            part.attention.document_ids
            if part.attention.document_ids is not None
            else torch.zeros_like(part.input_ids)
            for _, part, _ in parts
        ]
        docs = _pad_rows(tensors, parts, -1, B, width)  # padding: a document of its own
    prefix = None
    if kind == "prefix":
        prefix = torch.zeros(B, dtype=torch.long)
        for rows, part, _ in parts:
            if part.attention.prefix_lengths is not None:
                prefix[rows] = part.attention.prefix_lengths.long()
    return AttentionSpec(kind, document_ids=docs, prefix_lengths=prefix)
