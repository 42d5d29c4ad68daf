"""BERT-style token masking for masked language modeling (Devlin et al. 2019, §3.1, App. A.1).

A share ``probability`` (15%) of the candidate tokens is selected; each selected token becomes
the mask token with probability 0.8, a random token with 0.1, and stays as it is with 0.1. The
label is the original token at selected positions and ``IGNORE_INDEX`` elsewhere.

Two selection rules:

- ``exact_count=False`` (Hugging Face ``DataCollatorForLanguageModeling``): an independent
  Bernoulli draw per candidate, so the count varies.
- ``exact_count=True`` (BERT ``create_masked_lm_predictions``): exactly
  ``min(max_predictions, max(1, round(num_candidates * probability)))`` tokens per row, filled
  by whole units in a random order, skipping a unit that would overshoot. BERT counts CLS/SEP
  in the length; here only candidates count, since special tokens can never be selected.
  ``max_predictions`` is BERT's ``max_predictions_per_seq`` (20 at 128 tokens, where it rarely
  binds; BERT sized its fixed prediction arrays with it); None means no cap.

Special tokens are never selected and never drawn as random replacements (fairseq gives them
zero weight; HF excludes them from selection). With ``word_starts`` the unit is a whole word:
all of its tokens are selected together (BERT's whole-word masking).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pretrain.objectives.base import IGNORE_INDEX


def mask_tokens(
    tokens: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    exact_count: bool = False,
    word_starts: torch.Tensor | None = None,
    max_predictions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, labels)`` for ``tokens`` ``(B, T)``.

    Args:
        tokens: original token ids.
        generator: the only source of randomness (a new corruption per draw).
        mask_id: id written at masked positions.
        vocab_size: random replacements are drawn from ``[0, vocab_size)`` minus specials.
        special_ids: ids never selected and never drawn as replacements.
        probability: share of candidate tokens selected.
        mask_replace_prob, random_replace_prob: shares of selected tokens replaced by the mask
            token and by a random token (the rest keep their token).
        exact_count: BERT's exact count per row instead of independent Bernoulli draws.
        word_starts: ``(B, T)`` bool, True where a token starts a word (whole-word masking).
        max_predictions: with ``exact_count``, at most this many selected tokens per row.
    """
    if not 0.0 <= probability <= 1.0 or mask_replace_prob + random_replace_prob > 1.0:
        raise ValueError("MLM probabilities must be in [0, 1] and replacements sum to <= 1")
    special = torch.as_tensor(sorted(set(special_ids)), dtype=tokens.dtype)
    candidates = ~torch.isin(tokens, special)  # (B, T)
    units = _unit_ids(candidates, word_starts)  # (B, T) unit index, -1 on specials
    if exact_count:
        selected = _select_exact(units, candidates, probability, generator, max_predictions)
    else:
        selected = _select_bernoulli(units, probability, generator)

    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    roll = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (roll < mask_replace_prob)
    to_random = selected & ~to_mask & (roll < mask_replace_prob + random_replace_prob)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    pool = torch.nonzero(allowed).squeeze(1).to(tokens.dtype)
    random_tokens = pool[torch.randint(len(pool), tokens.shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


def _unit_ids(candidates: torch.Tensor, word_starts: torch.Tensor | None) -> torch.Tensor:
    """Per position, the index (within its row) of the unit it belongs to; -1 on specials."""
    if word_starts is None:
        starts = candidates
    else:
        # a word also starts right after a special token
        after_special = torch.zeros_like(candidates)
        after_special[:, 1:] = ~candidates[:, :-1]
        starts = candidates & (word_starts | after_special)
        starts[:, 0] = candidates[:, 0]
    ids = torch.cumsum(starts.long(), dim=1) - 1
    return torch.where(candidates, ids, torch.full_like(ids, -1))


def _select_bernoulli(
    units: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    num_units = int(units.max()) + 1 if units.numel() else 0
    draws = torch.rand((units.shape[0], max(num_units, 1)), generator=generator) < probability
    picked = torch.gather(draws, 1, units.clamp(min=0))
    return picked & (units >= 0)


def _select_exact(
    units: torch.Tensor,
    candidates: torch.Tensor,
    probability: float,
    generator: torch.Generator,
    max_predictions: int | None = None,
) -> torch.Tensor:
    selected = torch.zeros_like(candidates)
    for row in range(units.shape[0]):
        num_candidates = int(candidates[row].sum())
        if num_candidates == 0:
            continue
        target = max(1, round(num_candidates * probability))
        if max_predictions is not None:
            target = min(target, max_predictions)
        row_units = units[row]
        sizes = torch.bincount(row_units[row_units >= 0])
        chosen = torch.zeros(len(sizes), dtype=torch.bool)
        count = 0
        for unit in torch.randperm(len(sizes), generator=generator).tolist():
            if count >= target:
                break
            if count + int(sizes[unit]) > target:
                continue  # BERT skips a word that would overshoot
            chosen[unit] = True
            count += int(sizes[unit])
        selected[row] = chosen[row_units.clamp(min=0)] & (row_units >= 0)
    return selected
