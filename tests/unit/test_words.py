"""Word boundaries in byte-level BPE tokens: whitespace-separated words, whatever the pieces."""

from __future__ import annotations

import pytest
import torch

from pretrain.objectives import build_objective
from pretrain.objectives.words import WordBoundaries

TEXTS = [
    "The end.\nThen he said",  # a line's first word after a newline token
    "naïve café, déjà vu",  # characters split over byte-level tokens
    "wait—what?  Two  spaces\n\n\tand a tab",
    "x = f(a, b)\nreturn x",
]


def _words(tokenizer, words: WordBoundaries, text: str) -> list[str]:
    ids = tokenizer.encode(text)
    starts = words.starts(torch.tensor(ids)).tolist()
    groups: list[list[int]] = []
    for i, start in zip(ids, starts, strict=True):
        if start:
            groups.append([])
        groups[-1].append(i)
    return [tokenizer.decode(g) for g in groups]


@pytest.fixture(scope="module")
def words(tokenizer) -> WordBoundaries:
    texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    return WordBoundaries.from_token_texts(texts)


@pytest.mark.parametrize("text", TEXTS)
def test_words_are_the_whitespace_separated_stretches(tokenizer, words, text):
    found = _words(tokenizer, words, text)
    assert "".join(found) == text  # every token in exactly one word, in order
    # each word is one stretch without whitespace (with the whitespace before it), or
    # whitespace alone
    assert [w.strip() for w in found if w.strip()] == text.split()
    assert all(len(w.split()) <= 1 for w in found)


def test_a_line_starts_a_word_and_split_characters_do_not(tokenizer, words):
    assert "Then" in _words(tokenizer, words, "The end.\nThen he said")
    ids = tokenizer.encode("naïve")
    assert len(ids) > 1 and words.starts(torch.tensor(ids)).tolist() == [True] + [False] * (
        len(ids) - 1
    )


def test_whole_word_masking_keeps_a_line_start_apart_from_the_newline(tokenizer):
    """The MLM objective's whole words are these words: masking a newline does not mask the
    word that starts the next line with it (a leading-space rule would join the two)."""
    from pretrain.config import ObjectiveConfig
    from pretrain.data.loader import TokenBatch
    from pretrain.objectives.base import IGNORE_INDEX

    cfg = ObjectiveConfig(name="mlm", whole_word_masking=True, mlm_probability=0.5)
    ids = tokenizer.encode("The end.\nThen he said it.\nThen he left.\nThen we ran.")
    objective = build_objective(cfg, tokenizer, len(ids) - 1)
    tokens = torch.tensor([ids] * 64)
    zeros = torch.zeros(64, dtype=torch.long)
    batch = objective(TokenBatch(tokens, torch.zeros_like(tokens), zeros, zeros),
                      torch.Generator().manual_seed(0))  # fmt: skip
    selected = batch.labels != IGNORE_INDEX
    # the tokens that end a line (the tokenizer may merge "." and the newline)
    at = [i for i in range(len(ids) - 2) if tokenizer.decode([ids[i]]).endswith("\n")]
    assert at and selected[:, at].any()
    # the line's end and the next line's first token are selected apart in some rows
    assert (selected[:, at] != selected[:, [i + 1 for i in at]]).any()


def test_tables_must_match():
    with pytest.raises(ValueError, match="one size"):
        WordBoundaries(torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
