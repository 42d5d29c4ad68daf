"""BART denoising: each noise alone over many seeds, the fixed shapes, and the target."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.data.loader import TokenBatch
from pretrain.objectives.bart import BARTDenoising, sentence_end_table
from pretrain.objectives.bart_noise import (
    permute_sentences,
    poisson_pmf,
    poisson_span_lengths,
    split_sentences,
)
from pretrain.objectives.words import WordBoundaries

BOS, EOS, PAD, MASK = 0, 1, 2, 3
SPECIAL = list(range(10))
V = 300
FULL_STOPS = (10, 11)
SENTENCE_ENDS = torch.zeros(V, dtype=torch.bool)
SENTENCE_ENDS[list(FULL_STOPS)] = True
TWO_TOKEN_WORDS = torch.arange(V) % 2 == 0  # even ids start a word, odd ids continue one
SEEDS = st.integers(0, 2**31 - 1)
NOISE_OFF = dict(
    mask_ratio=0.0,
    random_ratio=0.0,
    token_mask_ratio=0.0,
    deletion_ratio=0.0,
    insert_ratio=0.0,
    permute_sentence_ratio=0.0,
    rotate_ratio=0.0,
)


def _words(opens: torch.Tensor) -> WordBoundaries:
    """Words by token id alone: ``opens`` marks the ids that start one."""
    return WordBoundaries(opens, torch.zeros_like(opens))


def _objective(seq_len: int = 66, words=None, **ratios) -> BARTDenoising:
    return BARTDenoising(
        seq_len,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        mask_id=MASK,
        decoder_start_id=PAD,
        special_ids=SPECIAL,
        vocab_size=V,
        words=words,
        sentence_ends=SENTENCE_ENDS,
        **{**NOISE_OFF, **ratios},
    )


def _window(seed: int, length: int, words: bool = False, docs: int = 2) -> torch.Tensor:
    """Ordinary tokens with some full stops and ``docs`` document-ending EOS tokens."""
    g = torch.Generator().manual_seed(seed)
    if words:  # whole two-token words: an even id, then an odd one
        starts = 2 * torch.randint(6, V // 2, (length // 2 + 1,), generator=g)
        tokens = torch.stack([starts, starts + 1], dim=1).reshape(-1)[:length]
    else:
        tokens = torch.randint(12, V, (length,), generator=g)
        stops = torch.randperm(length, generator=g)[: length // 8]
        tokens[stops] = torch.tensor(FULL_STOPS)[torch.arange(len(stops)) % 2]
    tokens[torch.randperm(length, generator=g)[:docs]] = EOS
    return tokens


def _run(objective: BARTDenoising, window: torch.Tensor, seed: int):
    tokens = window[None, :]
    batch = TokenBatch(tokens, torch.zeros_like(tokens), torch.zeros(1), torch.zeros(1))
    return objective(batch, torch.Generator().manual_seed(seed))


def _content(input_ids: torch.Tensor) -> list[int]:
    """The noised text between BOS and the final EOS of one encoder row."""
    row = input_ids.tolist()
    return row[1 : len(row) - 1 - row[::-1].index(EOS)]


def _glob_match(noised: list[int], original: list[int]) -> bool:
    """Whether ``original`` is ``noised`` with each MASK standing for any run, empty included."""
    chunks, current = [], []
    for t in noised + [None]:
        if t == MASK or t is None:
            chunks.append(current)
            current = []
        else:
            current.append(t)
    if len(chunks) == 1:
        return chunks[0] == original
    first, *middle, last = chunks
    if original[: len(first)] != first or len(first) + len(last) > len(original):
        return False
    if last and original[-len(last) :] != last:
        return False
    i, end = len(first), len(original) - len(last)
    for chunk in middle:  # leftmost match of each literal run is optimal for *-only globs
        while i + len(chunk) <= end and original[i : i + len(chunk)] != chunk:
            i += 1
        if i + len(chunk) > end:
            return False
        i += len(chunk)
    return True


def _tiles(content: list[int], pieces: list[list[int]]) -> bool:
    """Whether ``content`` is the pieces concatenated in some order, each used once."""
    if not pieces:
        return not content
    for k, piece in enumerate(pieces):
        if content[: len(piece)] == piece and _tiles(
            content[len(piece) :], pieces[:k] + pieces[k + 1 :]
        ):
            return True
    return False


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS)
def test_shapes_target_and_framing_are_fixed_with_every_noise_on(seed):
    objective = _objective(
        mask_ratio=0.3,
        random_ratio=0.1,
        token_mask_ratio=0.1,
        deletion_ratio=0.1,
        insert_ratio=0.2,
        permute_sentence_ratio=1.0,
        rotate_ratio=0.5,
    )
    window = _window(seed, objective.window_length(66))
    batch = _run(objective, window, seed)
    assert batch.input_ids.shape == batch.labels.shape == batch.decoder_input_ids.shape == (1, 66)
    assert batch.labels[0].tolist() == [BOS, *window.tolist(), EOS]  # the original, always
    assert batch.decoder_input_ids[0].tolist() == [PAD, *batch.labels[0, :-1].tolist()]
    row = batch.input_ids[0].tolist()
    content = _content(batch.input_ids[0])
    assert row[0] == BOS and row[len(content) + 1] == EOS
    assert set(row[len(content) + 2 :]) <= {PAD}
    assert not set(content) & (set(SPECIAL) - {EOS, MASK})  # random ids are never special


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS)
def test_deletion_alone_leaves_a_subsequence_and_keeps_special_tokens(seed):
    window = _window(seed, 64)
    content = _content(_run(_objective(deletion_ratio=0.2), window, seed).input_ids[0])
    remaining = iter(window.tolist())
    assert all(t in remaining for t in content)  # a subsequence of the original
    ordinary = int((window != EOS).sum())
    assert len(window) - len(content) == math.ceil(0.2 * ordinary)
    assert content.count(EOS) == int((window == EOS).sum())


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS)
def test_token_masking_alone_masks_an_exact_share_in_place(seed):
    window = _window(seed, 64)
    content = _content(_run(_objective(token_mask_ratio=0.15), window, seed).input_ids[0])
    assert len(content) == len(window)
    changed = [i for i, (a, b) in enumerate(zip(content, window.tolist(), strict=True)) if a != b]
    assert all(content[i] == MASK for i in changed)
    assert len(changed) == math.ceil(0.15 * int((window != EOS).sum()))
    assert all(window[i] != EOS for i in changed)


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS)
def test_infilling_alone_replaces_spans_of_whole_words_by_one_mask_each(seed):
    objective = _objective(mask_ratio=0.3, words=_words(TWO_TOKEN_WORDS))
    window = _window(seed, 64, words=True, docs=0)
    content = _content(_run(objective, window, seed).input_ids[0])
    assert _glob_match(content, window.tolist())  # each mask stands for a span, maybe empty
    # 32 words of two tokens each, so the hidden tokens are exactly twice the words to hide
    kept = sum(t != MASK for t in content)
    assert len(window) - kept == 2 * math.ceil(0.3 * 32)


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS)
def test_infilling_makes_one_mask_per_poisson_span_including_insertions(seed):
    window = _window(seed, 64, docs=0)
    content = _content(_run(_objective(mask_ratio=0.3), window, seed).input_ids[0])
    budget = math.ceil(0.3 * 64)
    # text infilling draws the span lengths first, from the same generator
    lengths = poisson_span_lengths(budget, 3.0, torch.Generator().manual_seed(seed))
    assert content.count(MASK) == len(lengths)
    assert len(window) - (len(content) - content.count(MASK)) == budget
    assert _glob_match(content, window.tolist())


def test_mask_ratio_over_many_seeds():
    objective = _objective(mask_ratio=0.3, words=_words(torch.arange(V) % 3 != 0))
    hidden = total = 0
    for seed in range(200):
        window = _window(seed, 64, docs=1)
        content = _content(_run(objective, window, seed).input_ids[0])
        hidden += len(window) - sum(t != MASK for t in content)
        total += len(window)
    assert abs(hidden / total - 0.3) < 0.03


def test_span_lengths_are_poisson_with_the_given_mean():
    g = torch.Generator().manual_seed(0)
    lengths = poisson_span_lengths(300_000, 3.0, g)
    assert int(lengths.sum()) == 300_000
    body = lengths[:-1].double()  # the last one is trimmed to the budget
    assert abs(float(body.mean()) - 3.0) < 0.03
    assert abs(float((body == 0).double().mean()) - math.exp(-3.0)) < 0.003
    pmf = poisson_pmf(3.0)
    assert pmf[-1] < 1e-7 <= pmf[-2] and abs(float(pmf.sum()) - 1) < 1e-6
    assert abs(float(poisson_span_lengths(200_000, 3.5, g)[:-1].double().mean()) - 3.5) < 0.04


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS, ratio=st.sampled_from([0.5, 1.0]))
def test_sentence_permutation_preserves_the_multiset_of_sentences(seed, ratio):
    window = _window(seed, 64)
    ends = SENTENCE_ENDS[window] | (window == EOS)
    sentences = [s.tolist() for s in split_sentences(window, ends)]
    assert sum(sentences, []) == window.tolist()
    assert all(s[-1] in (*FULL_STOPS, EOS) for s in sentences[:-1])
    g = torch.Generator().manual_seed(seed)
    permuted, order = permute_sentences(window, ends, ratio, g)
    assert sorted(order.tolist()) == list(range(len(sentences)))
    assert permuted.tolist() == sum((sentences[i] for i in order.tolist()), [])
    assert int((order != torch.arange(len(order))).sum()) <= math.ceil(ratio * len(sentences))
    # and through the objective
    content = _content(_run(_objective(permute_sentence_ratio=ratio), window, seed).input_ids[0])
    assert _tiles(content, sentences)


def test_sentence_permutation_changes_the_order():
    window = _window(0, 64)
    orders = {
        tuple(_content(_run(_objective(permute_sentence_ratio=1.0), window, s).input_ids[0]))
        for s in range(20)
    }
    assert len(orders) > 10


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS)
def test_rotation_is_a_rotation(seed):
    window = _window(seed, 64).tolist()
    content = _content(_run(_objective(rotate_ratio=1.0), torch.tensor(window), seed).input_ids[0])
    assert any(content == window[k:] + window[:k] for k in range(len(window)))


def test_rotation_starts_anywhere():
    window = torch.arange(12, 76)
    starts = {
        _content(_run(_objective(rotate_ratio=1.0), window, s).input_ids[0])[0] for s in range(300)
    }
    assert len(starts) > 50


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_noise_that_lengthens_past_seq_len_is_cut_at_the_end(seed):
    objective = _objective(mask_ratio=0.3, insert_ratio=1.0)
    window = _window(seed, objective.raw_length)
    row = _run(objective, window, seed).input_ids[0]
    full = objective.noise(window, torch.Generator().manual_seed(seed))
    assert len(full) > 64  # insertions doubled it
    assert row.tolist() == [BOS, *full[:64].tolist(), EOS]  # no padding, EOS kept last


def test_random_replacements_are_never_special():
    objective = _objective(mask_ratio=0.3, token_mask_ratio=0.2, random_ratio=1.0)
    for seed in range(50):
        window = _window(seed, 64)
        content = _content(_run(objective, window, seed).input_ids[0])
        assert MASK not in content
        specials = [t for t in content if t in SPECIAL]
        assert set(specials) <= {EOS}
        if len(content) < objective.raw_length:  # nothing cut: every EOS is still there
            assert len(specials) == int((window == EOS).sum())


def test_same_seed_same_noise_other_seed_other_noise():
    objective = _objective(mask_ratio=0.3, permute_sentence_ratio=1.0, rotate_ratio=0.5)
    window = _window(7, 64)
    first, again, other = (_run(objective, window, s).input_ids for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_sentence_end_table_rule():
    texts = ["Hello", ".", " world.", '!"', "?)", "\n", " Mr", "...", " end.\n", "a.b", "…", " ?"]
    expected = [False, True, True, True, True, True, False, True, True, False, True, True]
    assert sentence_end_table(texts).tolist() == expected


def test_sentences_end_after_a_run_of_ends_and_the_tail_is_one():
    """``. \\n`` stays with its sentence; an unterminated tail is a sentence of its own."""
    DOT, NL = 5, 6
    ends = torch.zeros(20, dtype=torch.bool)
    ends[[DOT, NL]] = True
    tokens = torch.tensor([10, 11, DOT, NL, 12, DOT, 13, 14])
    got = [s.tolist() for s in split_sentences(tokens, ends[tokens])]
    assert got == [[10, 11, DOT, NL], [12, DOT], [13, 14]]
    assert [s.tolist() for s in split_sentences(tokens[:6], ends[tokens[:6]])] == [
        [10, 11, DOT, NL], [12, DOT]
    ]  # fmt: skip


def test_permutation_ratio_rounds_the_sentence_count_up():
    """fairseq shuffles ``ceil(ratio * n)`` sentences: half of 3 is 2, so the order changes
    about half the time and at most two sentences move."""
    DOT = 5
    ends = torch.zeros(20, dtype=torch.bool)
    ends[DOT] = True
    tokens = torch.tensor([10, DOT, 11, DOT, 12, DOT])
    g = torch.Generator().manual_seed(0)
    moved = []
    for _ in range(200):
        _, order = permute_sentences(tokens, ends[tokens], 0.5, g)
        moved.append(int((order != torch.arange(3)).sum()))
    assert set(moved) == {0, 2} and 60 < moved.count(2) < 140


def test_rotation_starts_at_every_token_with_equal_chance():
    # Six tokens, 600 draws: each start, the first token (no rotation) and the last included,
    # comes up about 100 times.
    from collections import Counter

    from pretrain.objectives.bart_noise import rotate

    window = torch.arange(12, 18)
    starts = Counter(int(rotate(window, torch.Generator().manual_seed(s))[0]) for s in range(600))
    assert set(starts) == set(range(12, 18))
    assert all(60 <= n <= 140 for n in starts.values()), starts
    assert rotate(torch.tensor([5]), torch.Generator()).tolist() == [5]
    assert rotate(torch.tensor([], dtype=torch.long), torch.Generator()).tolist() == []
