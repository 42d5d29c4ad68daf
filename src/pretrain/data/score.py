"""Score filter and dedup decisions against a ground-truth file (``dirty/dev_truth.jsonl.gz``).

The truth has one record per document: ``{"id", "kind", "dup_of", "lq_type", ...}`` with
``kind`` one of ``clean``, ``exact_dup``, ``near_dup``, ``low_quality``; ``dup_of`` names the
clean original of a copy. An original and its copies form a *group*; keeping any one member
of a group is correct (the corpus README).

Metrics (``pretrain data score``):

* ``dup_recall``: over exact copies and near copies whose word 5-gram Jaccard with their
  original is >= 0.8 (FineWeb's MinHash operating point), the share *caught*: the copy and its
  original do not both survive, and their group keeps at least one member.
* ``near_dup_recall_all``: the same over every near copy, however heavily edited.
* ``dup_precision``: over dedup removals (reasons starting with ``dedup``), the share that
  lost no content. A removal loses content when it removes a clean document outside every
  group, or when its group ends with no survivor (one wrong removal per such group). Junk
  may go.
* ``lq_recall``: share of low-quality documents removed (by any rule), overall and per type.
* ``clean_removed_fraction``: share of ``clean`` documents removed by a non-dedup rule.

A copy whose original is not in the input (a subset of the labelled set is scored) has no
pair to be caught with: it is left out of both recalls and counted in
``duplicates_without_original``. Its group still counts for ``dup_precision``.

Jaccard uses the same word 5-grams as the near-dedup stage's default: lower-cased
``\\w+`` words.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

NEAR_DUP_JACCARD = 0.8
_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The set of lower-cased word n-grams of ``text`` (the whole text if shorter than n)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def score(
    truth: Iterable[Mapping[str, Any]],
    kept_ids: Iterable[str],
    removed: Iterable[Mapping[str, Any]],
    texts: Mapping[str, str],
) -> dict[str, Any]:
    """Metrics of the decisions ``kept_ids`` / ``removed`` (``{"id", "reason"}``) vs ``truth``.

    Raises:
        ValueError: when a truth id is neither kept nor removed, or is both.
    """
    truth = {r["id"]: r for r in truth}
    kept = set(kept_ids)
    reasons = {r["id"]: r["reason"] for r in removed}
    both = kept & set(reasons)
    if both:
        raise ValueError(f"{len(both)} documents are both kept and removed, e.g. {min(both)}")
    decided = kept | set(reasons)
    missing = set(truth) - decided
    if missing:
        raise ValueError(f"{len(missing)} truth documents are neither kept nor removed, "
                         f"e.g. {min(missing)} (does the truth label documents the input "
                         "lacks, or were some lines unreadable?)")  # fmt: skip

    groups: dict[str, list[str]] = defaultdict(list)  # original -> copies
    for r in truth.values():
        if r["kind"] in ("exact_dup", "near_dup"):
            groups[r["dup_of"]].append(r["id"])
    survivors = {g: sum(m in kept for m in [g, *copies]) for g, copies in groups.items()}

    def caught(copy: str) -> bool:
        original = truth[copy]["dup_of"]
        both_survive = copy in kept and original in kept
        return not both_survive and survivors[original] > 0

    strict, all_near = [], []
    without_original = 0
    for r in truth.values():
        if r["kind"] in ("exact_dup", "near_dup") and r["dup_of"] not in decided:
            without_original += 1
        elif r["kind"] == "exact_dup":
            strict.append(caught(r["id"]))
        elif r["kind"] == "near_dup":
            hit = caught(r["id"])
            all_near.append(hit)
            j = jaccard(word_ngrams(texts[r["id"]]), word_ngrams(texts[r["dup_of"]]))
            if j >= NEAR_DUP_JACCARD:
                strict.append(hit)

    dedup_removed = [i for i, reason in reasons.items() if reason.startswith("dedup")]
    in_groups = set(groups) | {c for copies in groups.values() for c in copies}
    wrong = sum(1 for i in dedup_removed if truth[i]["kind"] == "clean" and i not in in_groups)
    emptied = {g for g, n in survivors.items() if n == 0}
    wrong += sum(
        1 for g in emptied if any(reasons.get(m, "").startswith("dedup") for m in [g, *groups[g]])
    )

    lq = [r for r in truth.values() if r["kind"] == "low_quality"]
    lq_by_type: dict[str, list[bool]] = defaultdict(list)
    for r in lq:
        lq_by_type[r["lq_type"]].append(r["id"] in reasons)
    clean = [r["id"] for r in truth.values() if r["kind"] == "clean"]
    clean_filtered = [i for i in clean if i in reasons and not reasons[i].startswith("dedup")]

    def share(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "documents": len(truth),
        "kept": len(kept),
        "removed": len(reasons),
        "dup_precision": 1.0 - wrong / len(dedup_removed) if dedup_removed else 1.0,
        "dup_recall": share(strict),
        "near_dup_recall_all": share(all_near),
        "lq_recall": share([r["id"] in reasons for r in lq]),
        "lq_recall_by_type": {t: share(v) for t, v in sorted(lq_by_type.items())},
        "clean_removed_fraction": len(clean_filtered) / len(clean) if clean else None,
        "removed_by_reason": dict(Counter(reasons.values()).most_common()),
        "dedup_removals": len(dedup_removed),
        "dedup_removals_wrong": wrong,
        "duplicates_scored": len(strict),
        "duplicates_without_original": without_original,
        "groups_emptied": len(emptied),
    }
