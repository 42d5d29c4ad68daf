"""Permutation language modeling (Yang et al. 2019, "XLNet: Generalized Autoregressive
Pretraining for Language Understanding").

For each window a factorization order is drawn (a random permutation of the positions) and a
token is predicted from the tokens before it *in that order*. With partial prediction (paper
§2.3, Table 7: K = 6) only the last ~1/K of the order is predicted: the targets. Every other
token is context and gets order -1, so it is visible to all positions and sees no target.
Targets are chosen in spans, as the original ``data_utils.py::_sample_mask`` does.

The objective only describes who may see whom (DESIGN.md §3): XLNet's ``perm_mask`` (i may
NOT see j; the query-stream mask, the content stream clearing the diagonal) as two ``(B, T)``
ranks, ``query_rank`` and ``key_rank`` (:func:`permutation_ranks`), and ``target_mapping``
``(B, M, T)``, one one-hot row per predicted position. Labels are the tokens themselves at
the targets, -100 elsewhere.

Two rules, from ``reference/objectives.md`` §6:

* ``rule="xlnet"`` (zihangdai/xlnet ``_sample_mask`` + ``_local_perm``): ``T // K`` targets
  per window, span lengths ``n`` in 1..5 with ``p(n) ∝ 1/n`` inside a context of ``K·n``
  tokens, topped up with random single positions; the inputs keep the real tokens (the query
  stream never reads a target's own content); special tokens (SEP, CLS, EOS...) are never
  targets and keep their rank in the order, so they see what precedes them and are seen by
  what follows; ``M = T // K`` rows of ``target_mapping``.
* ``rule="hf"`` (transformers ``DataCollatorForPermutationLanguageModeling``): spans of
  ``U{1..5}`` tokens, one per context of ``span / plm_probability`` tokens; the order is one
  permutation of T/2 pairs applied to both halves; targets' inputs become ``mask_id``;
  ``target_mapping`` is the identity (every position a query row). Needs an even T.

``perm_mask[i, j] = (self_rev[i] <= rev[j]) & (j is a target or special)`` with
``rev = order`` for targets and specials, ``-1`` for context, and ``self_rev = rev`` for targets,
``rev + 1`` otherwise (HF: ``rev[i] <= rev[j]`` for everything, specials included).

Each sample draws from the trainer's generator, so the draw is new per sample and per step and
is reproduced exactly on resume.
"""

from __future__ import annotations

from typing import Literal

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import IGNORE_INDEX, AttentionSpec, ModelBatch

Rule = Literal["xlnet", "hf"]
MAX_SPAN = 5


def span_targets_xlnet(
    length: int,
    num_predict: int,
    eligible: torch.Tensor,
    generator: torch.Generator,
    partial_k: float = 6.0,
    max_span: int = MAX_SPAN,
) -> torch.Tensor:
    """``(T,)`` bool: exactly ``min(num_predict, eligible.sum())`` targets (XLNet's
    ``_sample_mask`` on tokens, with ``mask_alpha = K``, ``mask_beta = 1``).

    Spans of ``n`` tokens, ``p(n) ∝ 1/n``, are laid left to right, each after a random left
    context inside a window of ``K·n`` tokens; the last span is shortened to the goal; random
    single eligible positions top up the count when the spans ran off the end.
    """
    # Enough uniform draws for the most spans that fit (each takes at least one position).
    u_len, u_ctx = torch.rand(2, length + 1, generator=generator, dtype=torch.float64)
    p = 1.0 / torch.arange(1, max_span + 1, dtype=torch.float64)
    cdf = (p / p.sum()).cumsum(0)
    # The walk runs on Python numbers: one span costs a few operations, not a few tensor calls
    # (32 windows of 512 took 31.6 ms with per-span tensor indexing, a third of an XLNet-base
    # step on an H100; docs/benchmarks.md).
    span_lengths = (torch.searchsorted(cdf, u_len, right=True) + 1).clamp(max=max_span).tolist()
    contexts = u_ctx.tolist()
    allowed = eligible.tolist()
    chosen = bytearray(length)
    count, cur, k = 0, 0, 0
    while cur < length and count < num_predict and k <= length:
        n = min(span_lengths[k], num_predict - count)
        ctx = int(n * partial_k)
        left = min(int(contexts[k] * ctx), ctx - 1)
        k += 1
        beg = cur + left
        end = beg + n
        if end >= length:
            break
        for i in range(beg, end):
            if allowed[i] and not chosen[i]:
                chosen[i] = 1
                count += 1
        cur = end + (ctx - left)
    target = torch.zeros(length, dtype=torch.bool)
    if length:  # frombuffer refuses an empty buffer
        target = torch.frombuffer(chosen, dtype=torch.bool).clone()
    need = min(num_predict, int(eligible.sum())) - count
    if need > 0:  # top up with random single positions, in a random order
        free = torch.nonzero(eligible & ~target).squeeze(1)
        pick = free[torch.randperm(len(free), generator=generator)[:need]]
        target[pick] = True
    return target


def span_targets_hf(
    length: int,
    eligible: torch.Tensor,
    generator: torch.Generator,
    probability: float = 1 / 6,
    max_span: int = MAX_SPAN,
) -> torch.Tensor:
    """``(T,)`` bool targets as HF's ``DataCollatorForPermutationLanguageModeling`` draws them."""
    target = torch.zeros(length, dtype=torch.bool)
    cur = 0
    while cur < length:
        span = int(torch.randint(1, max_span + 1, (1,), generator=generator))
        context = int(span / probability)
        start = cur + int(torch.randint(0, context - span + 1, (1,), generator=generator))
        target[start : start + span] = True
        cur += context
    return target & eligible


def xlnet_order(
    length: int, generator: torch.Generator, perm_size: int | None = None
) -> torch.Tensor:
    """``(T,)`` rank of each position in the factorization order (``_local_perm``'s ``index``):
    one random permutation of ``perm_size`` applied to every block of ``perm_size`` positions."""
    size = length if perm_size is None else perm_size
    if length % size:
        raise ValueError(f"perm_size {size} must divide the sequence length {length}")
    index = torch.arange(length).reshape(-1, size).T  # (size, blocks)
    index = index[torch.randperm(size, generator=generator)]
    return index.T.reshape(-1)


def hf_order(length: int, generator: torch.Generator) -> torch.Tensor:
    """HF's order: one permutation of the T/2 pairs ``(p, p + T/2)`` (first half before second),
    i.e. :func:`xlnet_order` with ``perm_size = T/2``."""
    return xlnet_order(length, generator, length // 2)


# Key rank of a position nobody is hidden from (context under the XLNet rule): below every
# query rank (which are >= -1), so ``query_rank <= key_rank`` never holds for it.
VISIBLE_TO_ALL = -(2**62)


def permutation_ranks(
    order: torch.Tensor, target: torch.Tensor, special: torch.Tensor, rule: Rule = "xlnet"
) -> tuple[torch.Tensor, torch.Tensor]:
    """XLNet's ``perm_mask`` as two ``(..., T)`` ranks: i may NOT see j iff
    ``query_rank[i] <= key_rank[j]``.

    ``query_rank`` is ``self_rev`` and ``key_rank`` is ``rev`` where j is hidden (a target or,
    under the XLNet rule, a special token) and :data:`VISIBLE_TO_ALL` elsewhere. Two vectors
    instead of a ``T x T`` matrix: the batch stays O(T), and FlexAttention evaluates the rule
    per block (``models/common/flex.py``).

    Args:
        order: ``(..., T)`` rank of each position in the factorization order.
        target: ``(..., T)`` predicted positions.
        special: ``(..., T)`` special tokens (never targets; they keep their rank).
        rule: ``xlnet`` (a special token sees itself) or ``hf``.
    """
    context = ~target & ~special
    rev = torch.where(context, torch.full_like(order, -1), order)
    self_rev = torch.where(target, rev, rev + 1) if rule == "xlnet" else rev
    hidden = ~context if rule == "xlnet" else target
    key_rank = torch.where(hidden, rev, torch.full_like(rev, VISIBLE_TO_ALL))
    return self_rev, key_rank


def permutation_mask(
    order: torch.Tensor, target: torch.Tensor, special: torch.Tensor, rule: Rule = "xlnet"
) -> torch.Tensor:
    """``(..., T, T)`` bool, True where i may NOT see j (query stream; XLNet's ``perm_mask``):
    ``(self_rev[i] <= rev[j]) & hidden[j]``, from :func:`permutation_ranks` through
    :meth:`AttentionSpec.permutation_allowed`, which holds the rule."""
    query_rank, key_rank = permutation_ranks(order, target, special, rule)
    lead, T = query_rank.shape[:-1], query_rank.shape[-1]
    spec = AttentionSpec(  # the one rule, on (B, T) ranks
        "permutation", query_rank=query_rank.reshape(-1, T), key_rank=key_rank.reshape(-1, T)
    )
    return (~spec.permutation_allowed()).reshape(*lead, T, T)


class PermutationLM:
    """XLNet's permutation LM with partial prediction (K = 6) and span-based targets."""

    name = "plm"
    families = ("xlnet",)
    reports_bits_per_byte = False  # not next-token prediction: no loss per byte of text
    reports_accuracy = True  # share of targets predicted right

    def __init__(
        self,
        special_ids: list[int],
        mask_id: int | None = None,
        rule: Rule = "xlnet",
        partial_k: float = 6.0,
        max_span: int = MAX_SPAN,
        perm_size: int | None = None,
    ):
        if rule not in ("xlnet", "hf"):
            raise ValueError(f"rule: unknown {rule!r}; valid: 'xlnet', 'hf'")
        if rule == "hf" and mask_id is None:
            raise ValueError("rule 'hf' replaces targets by the mask token: give mask_id")
        if not partial_k > 1:
            raise ValueError(f"partial_k must be > 1, got {partial_k}")
        self.special_ids = torch.tensor(sorted({i for i in special_ids if i is not None}))
        self.mask_id = mask_id
        self.rule = rule
        self.partial_k = partial_k
        self.max_span = max_span
        self.perm_size = perm_size

    def num_predict(self, seq_len: int) -> int:
        """Targets per window under ``rule="xlnet"``: ``T // K`` (85 of 512 for K = 6)."""
        return max(1, int(seq_len // self.partial_k))

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        if generator is None:
            raise ValueError("PLM draws a new order per sample: pass a torch.Generator")
        tokens = batch.tokens[:, :-1]  # (B, T)
        B, T = tokens.shape
        if self.rule == "hf" and T % 2:
            raise ValueError(f"rule 'hf' needs an even sequence length, got {T}")
        special = torch.isin(tokens, self.special_ids)  # (B, T)
        orders = torch.empty(B, T, dtype=torch.long)
        targets = torch.empty(B, T, dtype=torch.bool)
        for b in range(B):
            eligible = ~special[b]
            if self.rule == "xlnet":
                t = span_targets_xlnet(
                    T, self.num_predict(T), eligible, generator, self.partial_k, self.max_span
                )
                order = xlnet_order(T, generator, self.perm_size)
            else:
                t = span_targets_hf(T, eligible, generator, 1 / self.partial_k, self.max_span)
                order = hf_order(T, generator)
            targets[b] = t
            orders[b] = order
        query_rank, key_rank = permutation_ranks(orders, targets, special, self.rule)
        labels = torch.where(targets, tokens, IGNORE_INDEX)
        if self.rule == "hf":
            inputs = torch.where(targets, self.mask_id, tokens)
            mapping = torch.eye(T).expand(B, T, T).clone()
        else:
            inputs = tokens
            mapping = target_mapping(targets, self.num_predict(T))
        return ModelBatch(
            input_ids=inputs,
            labels=labels,
            attention=AttentionSpec("permutation", query_rank=query_rank, key_rank=key_rank),
            target_mapping=mapping,
            objective=self.name,
        )


def target_mapping(targets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``(B, M, T)`` float one-hot rows, the targets of each row in position order, padded with
    zero rows up to ``M = max(num_rows, most targets in a row)``."""
    B, T = targets.shape
    rows = max(num_rows, int(targets.sum(1).max()) if B else 0)
    mapping = torch.zeros(B, rows, T)
    for b in range(B):
        pos = torch.nonzero(targets[b]).squeeze(1)
        mapping[b, torch.arange(len(pos)), pos] = 1.0
    return mapping
