"""MLM masking: rates, labels exactly on selected positions, specials untouched, whole words."""

from __future__ import annotations

import pytest
import torch

from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.mlm_masking import mask_tokens

VOCAB, MASK = 500, 3
SPECIALS = [0, 1, 2, 3, 4, 5]


def _tokens(seed: int, B: int = 16, T: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(6, VOCAB, (B, T), generator=g)
    tokens[:, 0] = 0  # bos
    tokens[:, 100] = 1  # eos inside the window
    tokens[:, -3:] = 2  # padding
    return tokens


def _mask(tokens, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(tokens, g, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, **kw)


@pytest.mark.parametrize("exact", [False, True])
def test_labels_exactly_on_selected_positions_and_never_on_specials(exact):
    selected_total = candidates_total = 0
    outcome = {"mask": 0, "random": 0, "kept": 0}
    for seed in range(40):
        tokens = _tokens(seed)
        inputs, labels = _mask(tokens, seed, exact_count=exact)
        selected = labels != IGNORE_INDEX
        special = torch.isin(tokens, torch.tensor(SPECIALS))
        assert not (selected & special).any()
        assert torch.equal(labels[selected], tokens[selected])
        assert torch.equal(inputs[~selected], tokens[~selected])  # unselected: untouched
        assert not torch.isin(inputs[selected & (inputs != MASK)], torch.tensor(SPECIALS)).any()
        outcome["mask"] += int((inputs[selected] == MASK).sum())
        outcome["kept"] += int((inputs[selected] == tokens[selected]).sum())
        outcome["random"] += int(((inputs != MASK) & (inputs != tokens) & selected).sum())
        selected_total += int(selected.sum())
        candidates_total += int((~special).sum())
        if exact:  # BERT: exactly round(15%) of the candidates in every row
            per_row = selected.sum(1)
            expected = torch.round((~special).sum(1) * 0.15).clamp(min=1)
            assert torch.equal(per_row, expected.long())
    assert abs(selected_total / candidates_total - 0.15) < 0.005
    n = sum(outcome.values())
    assert abs(outcome["mask"] / n - 0.8) < 0.02
    assert abs(outcome["random"] / n - 0.1) < 0.02  # a random draw may equal the original
    assert abs(outcome["kept"] / n - 0.1) < 0.02


def test_whole_words_are_selected_together():
    for seed in range(20):
        tokens = _tokens(seed)
        g = torch.Generator().manual_seed(1000 + seed)
        word_starts = torch.rand(tokens.shape, generator=g) < 0.4
        for exact in (False, True):
            _, labels = _mask(tokens, seed, exact_count=exact, word_starts=word_starts)
            selected = labels != IGNORE_INDEX
            special = torch.isin(tokens, torch.tensor(SPECIALS))
            for b in range(tokens.shape[0]):
                for t in range(1, tokens.shape[1]):
                    same_word = (
                        not word_starts[b, t] and not special[b, t] and not special[b, t - 1]
                    )
                    if same_word:
                        assert selected[b, t] == selected[b, t - 1]


def test_same_seed_same_corruption_new_seed_new_corruption():
    tokens = _tokens(0)
    a, b, c = _mask(tokens, 1), _mask(tokens, 1), _mask(tokens, 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_exact_count_is_capped_at_max_predictions():
    """BERT's ``num_to_predict = min(max_predictions_per_seq, max(1, round(n * 0.15)))``."""
    for seed in range(10):
        tokens = _tokens(seed)
        candidates = (~torch.isin(tokens, torch.tensor(SPECIALS))).sum(1)
        uncapped = torch.round(candidates * 0.15).clamp(min=1).long()
        for cap in (1, 5, 10_000):
            _, labels = _mask(tokens, seed, exact_count=True, max_predictions=cap)
            per_row = (labels != IGNORE_INDEX).sum(1)
            assert torch.equal(per_row, uncapped.clamp(max=cap))


def test_a_word_ends_at_a_special_token():
    """Tokens on both sides of a special are separate words even when ``word_starts`` says the
    later one continues a word: whole-word masking never joins them."""
    tokens = _tokens(0)
    word_starts = torch.zeros_like(tokens, dtype=torch.bool)  # no word starts anywhere
    apart = 0
    for seed in range(100):
        _, labels = _mask(tokens, seed, word_starts=word_starts, probability=0.5)
        selected = labels != IGNORE_INDEX
        apart += int((selected[:, 99] != selected[:, 101]).sum())  # EOS at 100
    assert apart > 0


def test_exact_count_holds_with_whole_words():
    for seed in range(10):
        tokens = _tokens(seed)
        g = torch.Generator().manual_seed(2000 + seed)
        word_starts = torch.rand(tokens.shape, generator=g) < 0.6  # many one-token words
        candidates = (~torch.isin(tokens, torch.tensor(SPECIALS))).sum(1)
        _, labels = _mask(tokens, seed, exact_count=True, word_starts=word_starts)
        per_row = (labels != IGNORE_INDEX).sum(1)
        assert torch.equal(per_row, torch.round(candidates * 0.15).long())
