"""Two-stream attention through FlexAttention: no ``(B, T, T)`` tensor in the batch or the mask.

Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized Attention
Kernels". The dense path (:class:`~pretrain.models.xlnet.model.TwoStreamAttention` with SDPA)
adds a float ``(B, H, M, T)`` bias holding the mask, the Transformer-XL position term and the
segment term. Here each of them is a rule evaluated inside the kernel:

* **who sees whom** is a ``mask_mod`` over XLNet's permutation ranks (i may NOT see j iff
  ``query_rank[i] <= key_rank[j]``, :func:`pretrain.objectives.plm.permutation_ranks`), built
  once per forward into a ``BlockMask`` shared by every layer; the content stream also sees
  its own position;
* the **position term** ``(q + r_r_bias)·W_r R(i - j)`` is a ``score_mod`` reading the
  ``(B, H, M, 2T)`` table of every distance at column ``j + T - i`` (Transformer-XL's rel-shift
  as an index), so the ``(B, H, M, T)`` gather is never written; its gradient flows back into
  the table;
* the **segment term** is a ``score_mod`` reading a ``(B, H, M, 2)`` table.

With ``position_encoding="rope"`` there is no position table: the mask is the whole rule.

**Factorization layout.** Under a random permutation every block of the mask is partial:
the kernel evaluates the rule for every score and skips nothing. Attention does not care in
which order the content stream's rows sit, as long as each row keeps its own position for
the position term. So :func:`factorization_layout` sorts the rows by their rank in the
factorization order (stable; XLNet's context tokens, all rank -1, come first). A query then
sees a prefix of the keys (plus itself in the content stream): the blocks inside the context
are full, those past a query's rank are empty, and only blocks on the boundary evaluate the
rule. The model gathers the tokens into this layout once per forward and scatters the
content stream back at the end; the query stream keeps its rows.

PyTorch runs FlexAttention's backward on CUDA only, so training through this path needs a GPU
(``attention_backend="auto"``, XLNet's default, takes it on CUDA only). On the CPU the forward
runs unfused; the tests check it against the dense path, and the gradients through PyTorch's
eager FlexAttention with its CPU device check lifted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pretrain.models.common import flex
from pretrain.models.common.flex_block_mask import build_block_mask


@dataclass(frozen=True)
class StreamRule:
    """What one stream's queries may see, in the form the kernel reads.

    Attributes:
        block_mask: the ``BlockMask`` for ``(M, T)`` (None: every query sees every key).
        query_pos: ``(B, M)`` position of each query row.
        key_pos: ``(B, T)`` position of each key (``arange`` in input order).
        query_types: ``(B, M)`` segment of each query row (None: no segment term).
        key_types: ``(B, T)`` segment of each key.
    """

    block_mask: object | None
    query_pos: torch.Tensor
    key_pos: torch.Tensor
    query_types: torch.Tensor | None = None
    key_types: torch.Tensor | None = None


def factorization_layout(key_rank: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` positions sorted by rank in the factorization order (stable): row ``r`` of
    the layout holds the token at position ``layout[:, r]``."""
    return torch.sort(key_rank, dim=1, stable=True).indices


def stream_rules(
    batch_size: int,
    seq_len: int,
    device: torch.device,
    query_rank: torch.Tensor | None,
    key_rank: torch.Tensor | None,
    query_pos: torch.Tensor | None,
    query_valid: torch.Tensor | None,
    token_types: torch.Tensor | None,
    layout: torch.Tensor | None = None,
) -> tuple[StreamRule, StreamRule]:
    """The content-stream and query-stream rules for one forward.

    Args:
        batch_size, seq_len, device: B, T and where the tensors live.
        query_rank, key_rank: ``(B, T)`` permutation ranks by position, or None
            (bidirectional).
        query_pos: ``(B, M)`` positions of the query-stream rows (None: one row per position,
            in input order).
        query_valid: ``(B, M)`` False for padding rows of ``target_mapping``; they see every
            key (their output is zeroed afterwards), so no row is fully masked.
        token_types: ``(B, T)`` segment ids by position, or None.
        layout: ``(B, T)`` position of each content row and key (:func:`factorization_layout`),
            or None for input order.
    """
    B = batch_size
    # (B, T) tables the kernels index, materialized (not stride-0 views)
    input_pos = torch.arange(seq_len, device=device).repeat(B, 1)
    if query_pos is None:
        query_pos = input_pos
    content_pos = input_pos if layout is None else layout
    M = query_pos.shape[1]
    content_mask = query_mask = None
    if query_rank is not None:
        row_rank = query_rank.gather(1, query_pos)  # (B, M), before the layout's gather
        if layout is not None:
            query_rank, key_rank = query_rank.gather(1, layout), key_rank.gather(1, layout)

        def content_mod(b, h, q_idx, kv_idx):
            return (q_idx == kv_idx) | (query_rank[b, q_idx] > key_rank[b, kv_idx])

        valid = query_valid if query_valid is not None else torch.ones_like(row_rank).bool()

        def query_mod(b, h, q_idx, kv_idx):
            return ~valid[b, q_idx] | (row_rank[b, q_idx] > key_rank[b, kv_idx])

        content_mask = build_block_mask(content_mod, B, seq_len, seq_len, device)
        query_mask = build_block_mask(query_mod, B, M, seq_len, device)
    row_types = key_types = None
    if token_types is not None:
        row_types = token_types.gather(1, query_pos)
        key_types = token_types if layout is None else token_types.gather(1, layout)
    content = StreamRule(content_mask, content_pos, content_pos, key_types, key_types)
    query = StreamRule(query_mask, query_pos, content_pos, row_types, key_types)
    return content, query


def flex_two_stream_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rule: StreamRule,
    position_table: torch.Tensor | None,
    segment_table: torch.Tensor | None,
) -> torch.Tensor:
    """Attention of ``q`` ``(B, H, M, hd)`` over ``k, v`` ``(B, H, T, hd)`` under ``rule``.

    Args:
        position_table: ``(B, H, M, 2T)`` scaled position scores of every distance ``T ..
            -T+1`` per query row, or None (RoPE).
        segment_table: ``(B, H, M, 2)`` scaled segment scores (same, other), or None.
    """
    T = k.shape[2]
    query_pos, key_pos = rule.query_pos, rule.key_pos
    query_types, key_types = rule.query_types, rule.key_types

    def add_terms(score, b, h, q_idx, kv_idx):
        # Python branches on captured constants: resolved once, when the kernel is traced
        if position_table is not None:
            column = key_pos[b, kv_idx] + T - query_pos[b, q_idx]  # Transformer-XL's rel-shift
            score = score + position_table[b, h, q_idx, column]
        if segment_table is not None:
            other = (query_types[b, q_idx] != key_types[b, kv_idx]).to(torch.int64)
            score = score + segment_table[b, h, q_idx, other]
        return score

    has_terms = position_table is not None or segment_table is not None
    score_mod = add_terms if has_terms else None
    return flex.attend(q, k, v, score_mod=score_mod, block_mask=rule.block_mask)
