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
    """The MLM objective's whole words are these words: a newline is masked apart from the
    word after it."""
    from pretrain.config import ObjectiveConfig

    objective = build_objective(ObjectiveConfig(name="mlm", whole_word_masking=True), tokenizer, 8)
    (newline,), then = tokenizer.encode("\n"), tokenizer.encode("Then")
    tokens = torch.tensor([[newline, *then]])
    assert objective.words.starts(tokens).tolist()[0][:2] == [True, True]


def test_tables_must_match():
    with pytest.raises(ValueError, match="one size"):
        WordBoundaries(torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
