"""Scoring filter and dedup decisions against ground truth: each metric on a hand-made case."""

from __future__ import annotations

import pytest

from pretrain.data.score import score, word_ngrams

TEXT = " ".join(f"w{i}" for i in range(40))
EDITED = TEXT.replace("w20", "zz")  # 5 of 36 five-grams changed: Jaccard 31/41 < 0.8
TRUTH = [
    {"id": "a", "kind": "clean", "dup_of": None, "lq_type": None},
    {"id": "a1", "kind": "exact_dup", "dup_of": "a", "lq_type": None},
    {"id": "a2", "kind": "near_dup", "dup_of": "a", "lq_type": None},
    {"id": "b", "kind": "clean", "dup_of": None, "lq_type": None},
    {"id": "b1", "kind": "exact_dup", "dup_of": "b", "lq_type": None},
    {"id": "c", "kind": "clean", "dup_of": None, "lq_type": None},
    {"id": "j1", "kind": "low_quality", "dup_of": None, "lq_type": "too_short"},
    {"id": "j2", "kind": "low_quality", "dup_of": None, "lq_type": "lorem_ipsum"},
]
TEXTS = {"a": TEXT, "a1": TEXT, "a2": EDITED, "b": "b " * 9, "b1": "b " * 9, "c": "c", "j1": "x",
         "j2": "lorem"}  # fmt: skip


def _score(kept, removed):
    return score(TRUTH, kept, [{"id": i, "reason": r} for i, r in removed.items()], TEXTS)


def test_keeping_one_member_per_group_is_perfect():
    removed = {"a1": "dedup:exact", "a2": "dedup:minhash", "b": "dedup:exact",
               "j1": "gopher:words", "j2": "c4:lorem"}  # fmt: skip
    result = _score(["a", "b1", "c"], removed)
    assert result["dup_recall"] == 1.0 and result["near_dup_recall_all"] == 1.0
    assert result["dup_precision"] == 1.0 and result["lq_recall"] == 1.0
    assert result["clean_removed_fraction"] == 0.0
    assert result["duplicates_scored"] == 2  # a1, b1; a2 is below Jaccard 0.8


def test_emptied_group_and_lost_clean_document_are_wrong_removals():
    removed = {"a": "dedup:minhash", "a1": "dedup:exact", "a2": "dedup:minhash",
               "b1": "dedup:exact", "c": "dedup:minhash", "j1": "x", "j2": "y"}  # fmt: skip
    result = _score(["b"], removed)
    assert result["dedup_removals"] == 5 and result["dedup_removals_wrong"] == 2
    assert result["dup_precision"] == pytest.approx(3 / 5)
    assert result["dup_recall"] == pytest.approx(1 / 2)  # a1 is not caught: group a is gone
    assert result["groups_emptied"] == 1


def test_both_surviving_is_a_miss_and_filters_count_against_clean():
    result = _score(["a", "a1", "a2", "b", "j2"], {"b1": "dedup:exact", "c": "gopher:x",
                                                   "j1": "gopher:y"})  # fmt: skip
    assert result["dup_recall"] == 0.5 and result["near_dup_recall_all"] == 0.0
    assert result["lq_recall"] == 0.5
    assert result["lq_recall_by_type"] == {"lorem_ipsum": 0.0, "too_short": 1.0}
    assert result["clean_removed_fraction"] == pytest.approx(1 / 3)


def test_every_document_must_be_decided_once():
    with pytest.raises(ValueError, match="neither kept nor removed"):
        _score(["a"], {})
    with pytest.raises(ValueError, match="both kept and removed"):
        _score([t["id"] for t in TRUTH], {"a": "x"})


def test_word_ngrams_are_lower_cased_words():
    assert word_ngrams("The cat, the CAT!", 2) == {("the", "cat"), ("cat", "the")}
    assert word_ngrams("one two", 5) == {("one", "two")}


def test_copies_whose_original_is_not_in_the_input_are_counted_not_scored():
    """Scoring a subset of the labelled set: a copy of a document the subset lacks has no
    pair to be caught with, so it is neither a hit nor a miss of either recall."""
    subset = [r for r in TRUTH if r["id"] != "a"]
    texts = {i: t for i, t in TEXTS.items() if i != "a"}
    removed = [{"id": "b", "reason": "dedup:exact"}, {"id": "j1", "reason": "gopher:x"},
               {"id": "j2", "reason": "c4:y"}]  # fmt: skip
    result = score(subset, ["a1", "a2", "b1", "c"], removed, texts)
    assert result["duplicates_without_original"] == 2  # a1 and a2
    assert result["duplicates_scored"] == 1 and result["dup_recall"] == 1.0  # b1
    assert result["near_dup_recall_all"] is None
    assert result["dup_precision"] == 1.0
