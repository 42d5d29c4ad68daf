"""Context parallelism: the C ranks of a group each hold 1/C of every sequence.

The form Llama 3 trains long contexts with (Dubey et al. 2024, "The Llama 3 Herd of Models",
§3.3.2): the sequence is cut into 2C chunks and rank r holds chunks r and 2C - 1 - r, so each
rank has the same share of a causal mask's work. Everything in a block but attention works
position by position and runs on the rank's T / C positions: the activations take 1/C of the
memory. Each attention layer all-gathers the group's keys and values (their gradients are
reduce-scattered back in the backward) and attends the rank's own queries over the whole
sequence. Llama 3 chose the all-gather over ring attention (Liu et al. 2023) because it
takes any mask, documents included, and with grouped-query heads the keys and values are
small next to the attention's work on long sequences.

From outside the model, as the other wrappers of ``pretrain.distributed``: :meth:`shard`
cuts a :class:`~pretrain.objectives.base.ModelBatch` to the rank's positions (the spec's
``query_positions`` and ``key_positions`` say where its queries and the gathered keys sit in
the sequence; the mask, the positions of RoPE or learned embeddings and the labels follow),
and a pre-hook on every :class:`~pretrain.models.common.attention.ScaledDotProduct` gathers
the keys and values whenever the mask is as wide as the whole sequence. A batch that is not
sharded (generation, a few-shot prompt) runs as on one process.

Every rank of a group reads the same batches and holds the same weights: gradients are
averaged over the data-parallel times context-parallel ranks (DDP over all of them; FSDP
shards over both, torchtitan's ``dp_shard_cp``), and each rank's loss sums cover its own
positions, which the sums over ranks add up.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from pretrain.models.common import flex
from pretrain.models.common.attention import ScaledDotProduct
from pretrain.objectives.base import AttentionSpec, ModelBatch


def shard_positions(seq_len: int, rank: int, size: int) -> torch.Tensor:
    """The ``seq_len / size`` positions ``rank`` of ``size`` holds: chunks ``rank`` and
    ``2 * size - 1 - rank`` of ``2 * size`` (one early, one late: equal causal work).

    Raises:
        ValueError: when ``seq_len`` is not a multiple of ``2 * size``.
    """
    if seq_len % (2 * size):
        raise ValueError(
            f"context parallelism over {size} ranks cuts a sequence into {2 * size} equal "
            f"chunks: the sequence length {seq_len} is not a multiple of {2 * size}"
        )
    chunk = seq_len // (2 * size)
    first, second = rank * chunk, (2 * size - 1 - rank) * chunk
    return torch.cat([torch.arange(first, first + chunk), torch.arange(second, second + chunk)])


def gathered_positions(seq_len: int, size: int) -> torch.Tensor:
    """The sequence positions of the keys an all-gather over the group returns, in its order
    (rank 0's positions, then rank 1's, ...)."""
    return torch.cat([shard_positions(seq_len, r, size) for r in range(size)])


def shard_spec(
    spec: AttentionSpec, seq_len: int, rank: int, size: int, device: torch.device | str
) -> AttentionSpec:
    """``spec`` (of a whole sequence of ``seq_len``) for the queries ``rank`` of ``size``
    holds (:func:`shard_positions`) over the keys gathered from every rank
    (:func:`gathered_positions`), on ``device``."""
    return dataclasses.replace(
        spec,
        query_positions=shard_positions(seq_len, rank, size).to(device),
        key_positions=gathered_positions(seq_len, size).to(device),
    )


def shard_batch(batch: ModelBatch, rank: int, size: int) -> ModelBatch:
    """``batch`` cut to the positions ``rank`` of ``size`` holds (:func:`shard_positions`).

    Inputs, labels and position ids keep those positions (explicit position ids are made
    when the batch has none); the attention spec gains ``query_positions`` (these) and
    ``key_positions`` (:func:`gathered_positions`) and keeps its whole-sequence tensors.

    Raises:
        ValueError: for an encoder-decoder or XLNet batch (decoder and encoder batches are
            split), or a length :func:`shard_positions` refuses.
    """
    if batch.decoder_input_ids is not None or batch.target_mapping is not None:
        raise ValueError(
            "context parallelism shards self-attention over one sequence: an encoder-decoder "
            "or XLNet batch is not supported"
        )
    attention = shard_spec(
        batch.attention, batch.input_ids.shape[1], rank, size, batch.input_ids.device
    )
    positions = attention.query_positions
    position_ids = positions[None] if batch.position_ids is None else batch.position_ids
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids[:, positions],
        labels=batch.labels[:, positions],
        attention=attention,
        position_ids=position_ids if batch.position_ids is None else position_ids[:, positions],
    )


log = logging.getLogger(__name__)


class ContextParallel:
    """A model's attention over a context-parallel group (see the module's docstring)."""

    def __init__(self, model: nn.Module, group: torch.distributed.ProcessGroup) -> None:
        import torch.distributed as dist

        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        cores = [m for m in model.modules() if isinstance(m, ScaledDotProduct)]
        if not cores:
            raise ValueError(f"{type(model).__name__} has no attention to gather keys for")
        for core in cores:
            core.register_forward_pre_hook(self._gather_keys_values, with_kwargs=True)
        backend = getattr(getattr(model, "cfg", None), "attention_backend", None)
        device = next(model.parameters()).device
        if device.type == "cuda" and backend is not None and not flex.enabled(backend, device):
            log.warning(
                "context parallelism with model.attention_backend=%s: each attention builds a "
                "dense (B, T/C, T) mask and SDPA computes every masked score; "
                "model.attention_backend=auto (FlexAttention) skips the masked blocks",
                backend,
            )

    def shard(self, batch: ModelBatch) -> ModelBatch:
        """This rank's share of ``batch`` (:func:`shard_batch`)."""
        return shard_batch(batch, self.rank, self.size)

    def _gather_keys_values(self, module: nn.Module, args: tuple, kwargs: dict):
        """Replace the local keys and values by the group's when the mask spans all of them."""
        q, k, v, *rest = args
        mask = rest[0] if rest else kwargs.get("mask")
        if mask is None:
            return None
        key_len = mask.shape[-1] if isinstance(mask, torch.Tensor) else mask.seq_lengths[1]
        if key_len == k.shape[2]:  # not a sharded batch
            return None
        if key_len != k.shape[2] * self.size:
            raise ValueError(
                f"the attention mask spans {key_len} keys; this rank holds {k.shape[2]} of a "
                f"context-parallel group of {self.size}"
            )
        return (q, self._all_gather(k), self._all_gather(v), *rest), kwargs

    def _all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (B, KV, T/C, hd) of every rank along the sequence, rank order: (B, KV, T, hd).

        The functional collective has a backward (a reduce-scatter: each rank gets the sum of
        the gradients every rank's queries sent its keys) and compiles.
        """
        from torch.distributed import _functional_collectives as funcol

        return funcol.all_gather_single_autograd(t.contiguous(), 2, self.group)
