"""Noise masks and sentinel rewriting shared by the denoising objectives.

T5 span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", §3.1.4), following ``t5/data/preprocessors.py``:

- :func:`random_spans_noise_mask`: ``round(L * density)`` noise tokens in
  ``round(noise / mean_span)`` spans, span and gap lengths drawn as uniform random
  compositions; the mask starts clean and ends with noise.
- :func:`span_corruption_lengths`: how many raw tokens give ``inputs_length`` after corruption,
  and the resulting target length (``random_spans_helper``; 568 raw -> 512 inputs / 114 targets
  at density 0.15 and mean span 3).
- :func:`corrupted_lengths`: the inputs and targets a window of L tokens becomes.
- :func:`noise_span_to_unique_sentinel`: each noise span becomes one sentinel; span k gets
  ``<|extra_id_k|>`` (T5's ids count down from the top of its vocabulary; here the sentinel
  ids are looked up from the tokenizer, so the k-th span still gets extra id k);
  :func:`span_corrupt` draws a mask and rewrites one window both ways.

All randomness comes from a ``torch.Generator`` passed in, so a sample's corruption is a pure
function of the generator's state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def random_composition(
    num_items: int, num_segments: int, generator: torch.Generator
) -> torch.Tensor:
    """``num_segments`` positive integers summing to ``num_items``, uniformly at random.

    T5's ``_random_segmentation``: shuffle ``num_items - 1`` slots holding
    ``num_segments - 1`` segment starts.
    """
    if not 1 <= num_segments <= num_items:
        raise ValueError(f"cannot split {num_items} items into {num_segments} positive parts")
    starts = torch.zeros(num_items - 1, dtype=torch.long)
    starts[: num_segments - 1] = 1
    starts = starts[torch.randperm(num_items - 1, generator=generator)]
    segment_id = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), starts]), dim=0)
    return torch.bincount(segment_id, minlength=num_segments)


def num_noise_tokens_and_spans(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """T5's counts for a sequence of ``length`` tokens (at least 1 noise and 1 clean token)."""
    length = max(length, 2)
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_noise_span_length))
    return num_noise, num_spans


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    generator: torch.Generator,
    mean_noise_span_length: float = 3.0,
) -> torch.Tensor:
    """``(length,)`` bool mask, True on noise tokens, as T5's ``random_spans_noise_mask``."""
    if noise_density == 0.0:
        return torch.zeros(length, dtype=torch.bool)
    padded = max(length, 2)
    num_noise, num_spans = num_noise_tokens_and_spans(length, noise_density, mean_noise_span_length)
    noise_lengths = random_composition(num_noise, num_spans, generator)
    clean_lengths = random_composition(padded - num_noise, num_spans, generator)
    interleaved = torch.stack([clean_lengths, noise_lengths], dim=1).reshape(-1)  # clean first
    span_starts = torch.cumsum(interleaved, dim=0)[:-1]
    indicator = torch.zeros(padded, dtype=torch.long)
    indicator[span_starts] = 1
    span_num = torch.cumsum(indicator, dim=0)
    return (span_num % 2 == 1)[:length]


def corrupted_lengths(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(inputs, targets) lengths span corruption makes of ``length`` tokens, each with one
    sentinel per span and its EOS: ``L - noise + spans + 1`` and ``noise + spans + 1``."""
    num_noise, num_spans = num_noise_tokens_and_spans(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens to corrupt, target length) so the corrupted input is ``inputs_length`` long.

    T5's ``random_spans_helper`` with one sentinel per span on each side and EOS on both.
    """

    tokens = inputs_length - 1
    while corrupted_lengths(tokens + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens += 1
    targets_length = corrupted_lengths(tokens, noise_density, mean_noise_span_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:  # T5's "minor hack"
        tokens -= 1
        targets_length -= 1
    return tokens, targets_length


def check_sentinels(
    raw_length: int, noise_density: float, mean_noise_span_length: float, num_sentinels: int
) -> None:
    """Refuse settings that need more distinct sentinels than the tokenizer has, or more
    clean stretches between noise spans than there are clean tokens."""
    num_noise, num_spans = num_noise_tokens_and_spans(
        raw_length, noise_density, mean_noise_span_length
    )
    if raw_length - num_noise < num_spans:
        raise ValueError(
            f"span corruption of {raw_length} tokens at noise density {noise_density} and mean "
            f"span {mean_noise_span_length} makes {num_spans} noise spans, which need a clean "
            f"token between each two, but only {raw_length - num_noise} tokens are clean; use "
            "a lower density or a longer mean span"
        )
    if num_spans > num_sentinels:
        raise ValueError(
            f"span corruption of {raw_length} tokens at noise density {noise_density} and mean "
            f"span {mean_noise_span_length} makes {num_spans} spans, but the tokenizer has only "
            f"{num_sentinels} sentinel tokens; use a longer mean span, a lower density or "
            "shorter sequences"
        )


def noise_span_to_unique_sentinel(
    tokens: torch.Tensor, noise_mask: torch.Tensor, sentinel_ids: Sequence[int]
) -> torch.Tensor:
    """Replace each run of masked tokens by one sentinel (the k-th run by ``sentinel_ids[k]``).

    Applied to ``~noise_mask`` it gives T5's targets (``nonnoise_span_to_unique_sentinel``).
    """
    previous = torch.cat([torch.zeros(1, dtype=torch.bool), noise_mask[:-1]])
    first_of_run = noise_mask & ~previous
    run_index = torch.cumsum(first_of_run.long(), dim=0) - 1
    if int(first_of_run.sum()) > len(sentinel_ids):
        raise ValueError(
            f"{int(first_of_run.sum())} noise spans but only {len(sentinel_ids)} sentinels"
        )
    sentinels = torch.as_tensor(list(sentinel_ids), dtype=tokens.dtype)
    out = torch.where(first_of_run, sentinels[run_index.clamp(min=0)], tokens)
    return out[~(noise_mask & previous)]  # drop the rest of each run


def span_corrupt(
    tokens: torch.Tensor,
    noise_density: float,
    mean_noise_span_length: float,
    sentinel_ids: Sequence[int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 span corruption of one window ``(L,)``: ``(inputs, targets)`` without EOS.

    Draws a noise mask (:func:`random_spans_noise_mask`); the inputs replace each noise span by
    a sentinel, the targets each clean span (:func:`noise_span_to_unique_sentinel`).
    """
    mask = random_spans_noise_mask(len(tokens), noise_density, generator, mean_noise_span_length)
    inputs = noise_span_to_unique_sentinel(tokens, mask, sentinel_ids)
    return inputs, noise_span_to_unique_sentinel(tokens, ~mask, sentinel_ids)


def prefix_length_bounds(length: int, noise_density: float) -> tuple[int, int]:
    """The range ``[round((1 - 2 d)(L - 1)), L - 1]`` (clamped to at least 1) of T5's
    ``random_prefix_noise_mask`` prefix lengths; ``[1, L - 1]`` at density 0.5."""
    if not 0.0 < noise_density <= 0.5:
        raise ValueError(f"prefix LM noise density must be in (0, 0.5], got {noise_density}")
    max_in = length - 1
    min_in = min(max(round((1 - 2 * noise_density) * (length - 1)), 1), max_in)
    return min_in, max_in


def random_prefix_length(length: int, noise_density: float, generator: torch.Generator) -> int:
    """T5's ``random_prefix_noise_mask`` as a length: the prefix is uniform on
    ``[round((1 - 2 d)(L - 1)), L - 1]`` (``[1, L - 1]`` at the default density 0.5)."""
    min_in, max_in = prefix_length_bounds(length, noise_density)
    return int(torch.randint(min_in, max_in + 1, (1,), generator=generator))
