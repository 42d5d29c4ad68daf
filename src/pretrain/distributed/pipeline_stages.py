"""A decoder cut into pipeline stages: which blocks each holds, what each runs, and a step's
micro-batches as the inputs a schedule splits (:mod:`pretrain.distributed.pipeline_parallel`).

A rank holds ``v`` stages (``distributed.pipeline_stages_per_rank``; more than one for the
interleaved schedule): with ``P`` ranks, rank ``r`` holds stages ``r, r + P, ...`` of ``P x v``
(Narayanan et al. 2021 §2.2.2, as PyTorch's looped placement). Parameter names do not change:
the model keeps the blocks its rank's stages own under their indices (``blocks.5...``) and a
parameter-free :class:`SkippedBlock` in place of each other one, so checkpoints are keyed as
the single-device model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from pretrain.distributed.context_parallel import shard_spec
from pretrain.objectives.base import AttentionSpec, ModelBatch


class SkippedBlock(nn.Module):
    """Stands in for a block another rank holds: no parameters, the stream passes through."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


def stage_layers(n_layers: int, num_stages: int, stage: int) -> range:
    """The blocks of ``stage``: contiguous runs, the first ``n_layers % num_stages`` stages one
    block longer (the last stage also projects onto the vocabulary).

    Raises:
        ValueError: with fewer blocks than stages.
    """
    if n_layers < num_stages:
        raise ValueError(
            f"{num_stages} pipeline stages (distributed.pipeline_parallel_degree x "
            f"pipeline_stages_per_rank) need at least as many blocks; the model has "
            f"n_layers={n_layers}"
        )
    base, extra = divmod(n_layers, num_stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


def rank_stages(pp_rank: int, pp_size: int, stages_per_rank: int) -> list[int]:
    """The stages rank ``pp_rank`` of ``pp_size`` holds: ``pp_rank``, then every ``pp_size``-th."""
    return [pp_rank + k * pp_size for k in range(stages_per_rank)]


def split_decoder(model: nn.Module, stages: list[int], num_stages: int) -> dict[int, range]:
    """Keep only ``stages``' parts of a :class:`~pretrain.models.decoder.model.DecoderLM`, in
    place; returns each stage's block indices."""
    n_layers = model.cfg.n_layers
    layers = {s: stage_layers(n_layers, num_stages, s) for s in stages}
    owned = {i for run in layers.values() for i in run}
    for i in range(n_layers):
        if i not in owned:
            model.blocks[i] = SkippedBlock()
    first, last = 0 in stages, num_stages - 1 in stages
    if not first:
        model.pos_embed = None
        if not (last and model.lm_head is None):  # the last keeps a tied embedding's copy
            model.embed = None
    if not last:
        model.norm = None
        model.lm_head = None
    return layers


class DecoderStage(nn.Module):
    """One stage's forward: token ids (first stage) or the residual stream in, the stream (or,
    on the last stage, the final-normed hidden states) out.

    Its parameters are its own only: its blocks, the first stage's embeddings, the last
    stage's final norm and output projection (the loss reads it; so DDP and FSDP see it as the
    stage's). The model's helpers (masks, positions) are reached through ``model``, which is
    not registered. The attention arrives as keyword tensors, which the schedule splits into
    micro-batches like the inputs: ``document_ids`` (B, T), ``prefix_lengths`` (B,) for a
    prefix LM's bidirectional prefix, ``position_ids`` (B, T). With ``context`` ``(rank,
    size)`` the stage runs a context-parallel rank's share of each sequence
    (:mod:`pretrain.distributed.context_parallel`): ``T / size`` positions in, the attention
    over the whole sequence's keys (``document_ids`` then cover the whole sequence).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: range,
        first: bool,
        last: bool,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        context: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.__dict__["model"] = model  # shared by a rank's stages
        self.context = context
        self.blocks = nn.ModuleList(model.blocks[i] for i in layers)
        self.first, self.last = first, last
        if first:
            self.embed, self.pos_embed = model.embed, model.pos_embed
        if last:
            self.norm = model.norm
            self.output = model.lm_head if model.lm_head is not None else model.embed
        # the master weights' dtype: what the stage passes on (FSDP's mixed precision may run
        # the blocks in bf16)
        self.stream_dtype = next(model.parameters()).dtype
        self.__dict__["_autocast"] = autocast  # a function, not state

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        T = x.shape[1]
        kind = "causal" if prefix_lengths is None else "prefix"
        spec = AttentionSpec(kind, document_ids=document_ids, prefix_lengths=prefix_lengths)
        if self.context is not None:  # this rank's positions of sequences C times longer
            rank, size = self.context
            spec = shard_spec(spec, T * size, rank, size, x.device)
        with self._autocast():
            mask, is_causal = model.attention_inputs(spec, T, x.device)
            if self.first:
                x = model.embed_tokens(x, position_ids)
            rope = model.rotary(T, position_ids)
            x = model.run_blocks(x, rope, mask, is_causal, blocks=self.blocks)
            out = model.norm(x) if self.last else x
        # In the master weights' dtype, which the schedule is told to expect (exact: a bf16
        # output is widened; the next stage or the loss narrows it again).
        return out.to(self.stream_dtype)


def stage_inputs(batches: list[ModelBatch]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A step's micro-batches as one batch, ``(input_ids, micro-batch index of each row,
    keyword tensors)``, for the schedule to split again into the same micro-batches.

    Causal micro-batches beside prefix-LM ones (a mixture of objectives) get a prefix of
    length 0, which is causal attention.

    Raises:
        ValueError: for attention a decoder's pipeline cannot pass on (bidirectional,
            permutation), or when only some micro-batches have document ids or positions.
    """
    kinds = {b.attention.kind for b in batches}
    if not kinds <= {"causal", "prefix"}:
        raise ValueError(
            f"pipeline parallelism runs causal and prefix-LM attention, not {sorted(kinds)}"
        )
    inputs = {  # positions shared by a micro-batch's rows (1, T) given to each row
        "position_ids": [
            None if b.position_ids is None else b.position_ids.expand(len(b.input_ids), -1)
            for b in batches
        ],
        "document_ids": [b.attention.document_ids for b in batches],
    }
    if "prefix" in kinds:
        inputs["prefix_lengths"] = [
            b.attention.prefix_lengths
            if b.attention.kind == "prefix"
            else torch.zeros(len(b.input_ids), dtype=torch.int64)
            for b in batches
        ]
    kwargs = {}
    for name, parts in inputs.items():
        present = [p is not None for p in parts]
        if any(present) and not all(present):
            raise ValueError(f"pipeline parallelism: {name} in some micro-batches of a step only")
        if all(present):
            kwargs[name] = torch.cat(parts)
    input_ids = torch.cat([b.input_ids for b in batches])
    index = torch.cat([torch.full((len(b.input_ids),), i) for i, b in enumerate(batches)])
    return input_ids, index, kwargs
