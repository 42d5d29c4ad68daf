"""T5 span-corruption noise: invariants over many seeds and the reference test vectors."""

from __future__ import annotations

import pytest
import torch

from pretrain.objectives.noise import (
    check_sentinels,
    noise_span_to_unique_sentinel,
    num_noise_tokens_and_spans,
    prefix_length_bounds,
    random_composition,
    random_spans_noise_mask,
    span_corruption_lengths,
)
from tests.helpers import merge_span_corruption

SENTINELS = list(range(32099, 31999, -1))  # T5's layout: extra_id_0 = 32099, counting down
EOS = 1


@pytest.mark.parametrize(
    ("inputs_length", "density", "mean_span", "raw", "targets"),
    [  # ../shared/reference/objectives.md §3.4 (T5 random_spans_helper)
        (512, 0.15, 3, 568, 114),
        (1024, 0.15, 3, 1137, 229),
        (2048, 0.15, 3, 2274, 456),
        (512, 0.15, 8, 588, 100),
        (512, 0.5, 3, 766, 512),
        (512, 0.5, 8, 908, 512),
        (512, 0.15, 64, 600, 92),
        (512, 0.5, 64, 1006, 512),
        (512, 0.15, 32, 598, 94),
        (512, 0.5, 32, 990, 512),
    ],
)
def test_input_and_target_lengths_match_t5(inputs_length, density, mean_span, raw, targets):
    assert span_corruption_lengths(inputs_length, density, mean_span) == (raw, targets)


@pytest.mark.parametrize("length", [2, 3, 10, 100, 568, 766])
@pytest.mark.parametrize(("density", "mean_span"), [(0.15, 3.0), (0.5, 3.0), (0.15, 8.0)])
def test_noise_mask_invariants_over_many_seeds(length, density, mean_span):
    num_noise, num_spans = num_noise_tokens_and_spans(length, density, mean_span)
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        mask = random_spans_noise_mask(length, density, g, mean_span)
        assert mask.shape == (length,) and mask.dtype == torch.bool
        if length >= 2:
            assert int(mask.sum()) == num_noise
            runs = int((mask & ~torch.cat([torch.tensor([False]), mask[:-1]])).sum())
            assert runs == num_spans
            assert not mask[0] and mask[-1]  # starts clean, ends with noise


def test_same_seed_same_mask_other_seed_other_mask():
    masks = [
        random_spans_noise_mask(568, 0.15, torch.Generator().manual_seed(s)) for s in (1, 1, 2)
    ]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_random_composition_is_positive_and_sums():
    g = torch.Generator().manual_seed(0)
    for n, k in [(10, 1), (10, 10), (85, 28), (483, 28)]:
        parts = random_composition(n, k, g)
        assert len(parts) == k and int(parts.sum()) == n and int(parts.min()) >= 1
    with pytest.raises(ValueError):
        random_composition(3, 4, g)


def test_sentinel_rewriting_matches_the_worked_example():
    # objectives.md §3.3: tokens 100..109, mask [0,0,1,1,0,0,0,1,0,1], V = 32100, EOS = 1
    tokens = torch.arange(100, 110)
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1, 0, 1], dtype=torch.bool)
    inputs = noise_span_to_unique_sentinel(tokens, mask, SENTINELS).tolist() + [EOS]
    targets = noise_span_to_unique_sentinel(tokens, ~mask, SENTINELS).tolist() + [EOS]
    assert inputs == [100, 101, 32099, 104, 105, 106, 32098, 108, 32097, 1]
    assert targets == [32099, 102, 103, 32098, 107, 32097, 109, 1]


def test_span_corruption_is_invertible_over_many_seeds():
    sentinels = list(range(1000, 1100))
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, 1000, (568,), generator=g)
        mask = random_spans_noise_mask(568, 0.15, g)
        inputs = noise_span_to_unique_sentinel(tokens, mask, sentinels)
        targets = noise_span_to_unique_sentinel(tokens, ~mask, sentinels)
        assert len(inputs) + 1 == 512 and len(targets) + 1 == 114
        # merge: each sentinel in the inputs stands for what follows it in the targets
        merged = merge_span_corruption(inputs.tolist(), targets.tolist(), sentinels)
        assert merged == tokens.tolist()


def test_too_many_spans_for_the_sentinels_is_refused():
    check_sentinels(568, 0.15, 3.0, 100)  # 28 spans: fine
    check_sentinels(568, 0.15, 3.0, 28)  # exactly as many sentinels as spans
    check_sentinels(4, 0.5, 1.0, 2)  # 2 spans over 2 clean tokens: one clean between
    with pytest.raises(ValueError, match="makes 28 spans, but the tokenizer has only 27"):
        check_sentinels(568, 0.15, 3.0, 27)
    with pytest.raises(ValueError, match="makes 128 spans, but the tokenizer has only 100"):
        check_sentinels(766, 0.5, 3.0, 100)


def test_prefix_bounds_follow_t5s_random_prefix_noise_mask():
    """Prefix lengths uniform on [round((1 - 2d)(L - 1)), L - 1], at least 1 (T5's
    ``random_prefix_noise_mask``): UL2's S(0.25) on 11 tokens keeps 5 to 10 as prefix."""
    assert prefix_length_bounds(11, 0.25) == (5, 10)
    assert prefix_length_bounds(11, 0.5) == (1, 10)
    assert prefix_length_bounds(2, 0.25) == (1, 1)


def test_high_density_still_leaves_a_clean_token():
    assert num_noise_tokens_and_spans(10, 0.97, 10.0) == (9, 1)


def test_a_one_token_sequence_is_counted_as_two_and_cut_back():
    # T5's random_spans_noise_mask raises the length to 2 to avoid degeneracy, then returns
    # the first `length` positions: one clean token.
    assert num_noise_tokens_and_spans(1, 0.15, 3.0) == num_noise_tokens_and_spans(2, 0.15, 3.0)
    assert num_noise_tokens_and_spans(1, 0.15, 3.0) == (1, 1)
    for seed in range(5):
        mask = random_spans_noise_mask(1, 0.15, torch.Generator().manual_seed(seed))
        assert mask.tolist() == [False]
