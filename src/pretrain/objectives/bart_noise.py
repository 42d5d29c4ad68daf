"""BART's noising functions, each a pure function of one token sequence and a generator.

Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for Natural Language
Generation, Translation, and Comprehension", §2.2, following fairseq
``fairseq/data/denoising_dataset.py::DenoisingDataset``:

- :func:`text_infilling`: ``ceil(p * num_words)`` words hidden in spans whose lengths are drawn
  from Poisson(lambda) (:func:`poisson_span_lengths`); each span becomes one mask token
  (fairseq ``replace_length=1``) and a zero-length span inserts one mask token.
- :func:`token_masking`: ``ceil(p * n)`` single tokens become the mask token.
- :func:`token_deletion`: ``ceil(p * n)`` single tokens are removed.
- :func:`insert_tokens`: mask tokens inserted at random positions (fairseq
  ``add_insertion_noise``).
- :func:`permute_sentences`: ``ceil(p * num_sentences)`` sentences shuffled among themselves.
- :func:`rotate`: the sequence rotated to start at a uniformly chosen token.

A mask token is replaced by a random ordinary token with probability ``random_ratio``
(fairseq ``mask_random``); random tokens come from ``random_ids``, which holds no special id
(fairseq draws from ``[1, |V|)``, special entries included). Positions where ``maskable`` is
False (special tokens: document-separating EOS, earlier masks) are never hidden, masked or
deleted: a span that would cross one is split there, and each side gets its own mask token.

One deliberate difference from fairseq: fairseq draws span starts independently, so spans may
overlap and merge, and fewer than ``ceil(p * num_words)`` words end up hidden. Here the spans
are laid out without overlap (uniformly over all arrangements), so exactly that many words are
hidden, as the paper's "30% of tokens" reads.
"""

from __future__ import annotations

import math

import torch


def _false(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.bool)


def _random_tokens(n: int, random_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if n == 0:
        return random_ids[:0]
    return random_ids[torch.randint(len(random_ids), (n,), generator=generator)]


def _mask_fill(
    n: int, mask_id: int, random_ratio: float, random_ids: torch.Tensor, generator, dtype
) -> torch.Tensor:
    """``n`` mask tokens, each a random token instead with probability ``random_ratio``."""
    fill = torch.full((n,), mask_id, dtype=dtype)
    swap = torch.rand(n, generator=generator) < random_ratio
    fill[swap] = _random_tokens(int(swap.sum()), random_ids, generator)
    return fill


def poisson_pmf(poisson_lambda: float) -> torch.Tensor:
    """P(k) for k = 0, 1, ..., cut after the first k with P(k) < 1e-7 (at most 128 values),
    exactly as fairseq builds its ``mask_span_distribution``."""
    probs, power, factorial = [], 1.0, 1.0
    for k in range(128):
        probs.append(math.exp(-poisson_lambda) * power / factorial)
        power *= poisson_lambda
        factorial *= k + 1
        if probs[-1] < 1e-7:
            break
    return torch.tensor(probs, dtype=torch.float64)


def poisson_span_lengths(
    budget: int, poisson_lambda: float, generator: torch.Generator
) -> torch.Tensor:
    """Span lengths (zeros included) drawn from Poisson(lambda) until they reach ``budget``;
    the last is trimmed so they sum to exactly ``budget`` (fairseq ``add_whole_word_mask``)."""
    probs = poisson_pmf(poisson_lambda)
    lengths = torch.multinomial(probs, budget, replacement=True, generator=generator)
    while int(lengths.sum()) < budget:
        more = torch.multinomial(probs, budget, replacement=True, generator=generator)
        lengths = torch.cat([lengths, more])
    cumulative = torch.cumsum(lengths, dim=0)
    last = int(torch.searchsorted(cumulative, budget))  # first index with cumsum >= budget
    lengths = lengths[: last + 1].clone()
    lengths[last] = budget - (int(cumulative[last - 1]) if last > 0 else 0)
    return lengths


def place_spans(
    num_words: int, lengths: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay spans of positive ``lengths`` over ``num_words`` words without overlap, uniformly.

    Choosing ``n`` of the ``free + n`` slots of the sequence "free words and spans" fixes where
    each span goes; span j then starts after the ``slot_j - j`` free words and the j spans
    before it. Returns ``(covered, first)``: ``(num_words,)`` bool, True on hidden words and on
    the first word of each span.
    """
    n = len(lengths)
    free = num_words - int(lengths.sum())
    if free < 0:
        raise ValueError(f"spans of {int(lengths.sum())} words do not fit in {num_words}")
    slots = torch.randperm(free + n, generator=generator)[:n].sort().values
    starts = slots - torch.arange(n) + torch.cumsum(lengths, dim=0) - lengths
    delta = torch.zeros(num_words + 1, dtype=torch.long)
    delta.index_add_(0, starts, torch.ones(n, dtype=torch.long))
    delta.index_add_(0, starts + lengths, -torch.ones(n, dtype=torch.long))
    first = _false(num_words)
    first[starts] = True
    return torch.cumsum(delta, dim=0)[:-1] > 0, first


def insert_tokens(
    tokens: torch.Tensor,
    num_inserts: int,
    mask_id: int,
    random_ratio: float,
    random_ids: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """``num_inserts`` mask tokens at random positions, ``ceil(n * random_ratio)`` of them random
    tokens instead (fairseq ``add_insertion_noise``)."""
    if num_inserts == 0:
        return tokens
    total = len(tokens) + num_inserts
    positions = torch.randperm(total, generator=generator)[:num_inserts]
    inserted = _false(total)
    inserted[positions] = True
    fill = torch.full((num_inserts,), mask_id, dtype=tokens.dtype)
    num_random = math.ceil(num_inserts * random_ratio)
    fill[:num_random] = _random_tokens(num_random, random_ids, generator)
    out = torch.empty(total, dtype=tokens.dtype)
    out[~inserted] = tokens
    out[positions] = fill
    return out


def text_infilling(
    tokens: torch.Tensor,
    word_starts: torch.Tensor,
    maskable: torch.Tensor,
    ratio: float,
    poisson_lambda: float,
    mask_id: int,
    random_ratio: float,
    random_ids: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Hide ``ceil(ratio * num_words)`` words in Poisson-length spans, one mask per span.

    Args:
        tokens: ``(L,)`` ids.
        word_starts: ``(L,)`` bool, True where a token begins a word; the first maskable token
            after an unmaskable one always does.
        maskable: ``(L,)`` bool, False on tokens that must stay (special tokens).
    """
    previous = torch.cat([_false(), maskable[:-1]])
    starts = maskable & (word_starts | ~previous)
    num_words = int(starts.sum())
    budget = math.ceil(num_words * ratio)
    if budget == 0:
        return tokens
    lengths = poisson_span_lengths(budget, poisson_lambda, generator)
    positive = lengths[lengths > 0]
    num_inserts = len(lengths) - len(positive)  # zero-length spans: one mask inserted each
    out = tokens
    if len(positive):
        positive = positive[torch.randperm(len(positive), generator=generator)]
        covered, first = place_spans(num_words, positive, generator)
        word = (torch.cumsum(starts.long(), dim=0) - 1).clamp(min=0)
        hidden = maskable & covered[word]
        run_start = hidden & ((starts & first[word]) | ~torch.cat([_false(), hidden[:-1]]))
        fill = _mask_fill(
            int(run_start.sum()), mask_id, random_ratio, random_ids, generator, tokens.dtype
        )
        out = tokens.clone()
        out[run_start] = fill
        out = out[~hidden | run_start]
    return insert_tokens(out, num_inserts, mask_id, random_ratio, random_ids, generator)


def _choose(maskable: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    candidates = maskable.nonzero().squeeze(1)
    count = math.ceil(len(candidates) * ratio)
    return candidates[torch.randperm(len(candidates), generator=generator)[:count]]


def token_masking(
    tokens: torch.Tensor,
    maskable: torch.Tensor,
    ratio: float,
    mask_id: int,
    random_ratio: float,
    random_ids: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """``ceil(ratio * n)`` of the ``n`` maskable tokens become the mask token (BART's token
    masking; fairseq ``mask_length="subword"``, ``replace_length=1``)."""
    chosen = _choose(maskable, ratio, generator)
    out = tokens.clone()
    out[chosen] = _mask_fill(len(chosen), mask_id, random_ratio, random_ids, generator, out.dtype)
    return out


def token_deletion(
    tokens: torch.Tensor, maskable: torch.Tensor, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """``ceil(ratio * n)`` of the ``n`` maskable tokens removed (BART's token deletion; fairseq
    ``mask_length="subword"``, ``replace_length=0``)."""
    keep = torch.ones(len(tokens), dtype=torch.bool)
    keep[_choose(maskable, ratio, generator)] = False
    return tokens[keep]


def split_sentences(tokens: torch.Tensor, sentence_ends: torch.Tensor) -> list[torch.Tensor]:
    """Sentences: each ends after the last of a run of sentence-ending tokens (so ``.\\n``
    stays with its sentence), and the sequence's tail counts as one (fairseq forces a full stop
    there too). fairseq cuts after the first full stop of a run instead."""
    if len(tokens) == 0:
        return [tokens]
    boundary = sentence_ends & ~torch.cat([sentence_ends[1:], _false()])
    boundary[-1] = True
    stops = boundary.nonzero().squeeze(1) + 1
    return list(torch.tensor_split(tokens, stops[:-1]))


def permute_sentences(
    tokens: torch.Tensor, sentence_ends: torch.Tensor, ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle ``ceil(ratio * num_sentences)`` sentences among themselves (fairseq
    ``permute_sentences``). Returns the tokens and the order of the original sentences."""
    sentences = split_sentences(tokens, sentence_ends)
    n = len(sentences)
    count = math.ceil(n * ratio)
    chosen = torch.randperm(n, generator=generator)[:count]
    order = torch.arange(n)
    order[chosen] = chosen[torch.randperm(count, generator=generator)]
    return torch.cat([sentences[i] for i in order.tolist()]), order


def rotate(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Document rotation: "a token is chosen uniformly at random, and the document is rotated
    so that it begins with that token" (Lewis et al. 2020, §2.2)."""
    if len(tokens) < 2:
        return tokens
    start = int(torch.randint(len(tokens), (1,), generator=generator))
    return torch.roll(tokens, -start)
