"""LSH buckets to candidate pairs, and the exact set measures that verify them.

A band's bucket is the set of documents with the same band key (:func:`pretrain.data.minhash.
band_keys`). :func:`bucket_pairs` sorts one band's keys with the documents' positions, so the
pairs it returns depend only on the keys, never on how the documents were split into tasks.

* For clustering without verification (FineWeb's pass, datatrove ``MinhashDedupBuckets``,
  reference/data.md §1.2) each member of a bucket is paired with the bucket's first document:
  ``k - 1`` pairs already connect a bucket of ``k``.
* For verified passes a false member of a bucket must not hide a true pair between two other
  members, so buckets up to ``all_pairs_max`` members yield all ``k (k - 1) / 2`` pairs; larger
  ones (a shingle so common it is boilerplate) fall back to pairs with the first member.

:func:`jaccard_sorted` and :func:`containment_sorted` measure sorted, deduplicated shingle hash
arrays (``|A & B| / |A | B|`` and ``|A & B| / min(|A|, |B|)``, Broder 1997).
"""

from __future__ import annotations

import numpy as np


def _sorted_runs(keys: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ordered by (key, position), and the start offset of each run of equal keys."""
    order = np.lexsort((positions, keys))
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return positions[order], starts


def bucket_pairs(keys: np.ndarray, positions: np.ndarray, all_pairs_max: int = 0) -> np.ndarray:
    """Candidate pairs ``(a, b)``, ``a < b``, of documents whose band ``keys`` are equal.

    Args:
        keys: one band key per document (any integer dtype).
        positions: the documents' positions (distinct ints), aligned with ``keys``.
        all_pairs_max: buckets of at most this many members yield all their pairs; the rest
            (and all buckets when 0) pair each member with the bucket's first position.

    Returns:
        An ``(n, 2)`` int64 array of pairs, sorted by bucket then position.
    """
    keys = np.asarray(keys)
    positions = np.asarray(positions, dtype=np.int64)
    if len(keys) < 2:
        return np.empty((0, 2), np.int64)
    members, starts = _sorted_runs(keys, positions)
    sizes = np.diff(np.r_[starts, len(members)])
    first = np.repeat(members[starts], sizes)
    star = np.stack([first, members], axis=1)[first != members]
    wide = np.flatnonzero((sizes > 2) & (sizes <= all_pairs_max))
    if not len(wide):
        return star
    extra = []
    for i in wide.tolist():  # rare: buckets of 3+ near-identical signatures
        run = members[starts[i] : starts[i] + sizes[i]]
        a, b = np.triu_indices(len(run), k=1)
        keep = a > 0  # pairs with the first member are in ``star`` already
        extra.append(np.stack([run[a[keep]], run[b[keep]]], axis=1))
    return np.concatenate([star, *extra])


def intersection_size(a: np.ndarray, b: np.ndarray) -> int:
    """``|a & b|`` of two sorted arrays of distinct values."""
    if len(a) > len(b):
        a, b = b, a
    if not len(a):
        return 0
    at = np.searchsorted(b, a)
    at[at == len(b)] = 0
    return int(np.count_nonzero(b[at] == a))


def jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted arrays of distinct shingle hashes (1.0 when both are empty)."""
    inter = intersection_size(a, b)
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def containment_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """``|a & b| / min(|a|, |b|)``: how much of the smaller set the larger one contains."""
    smaller = min(len(a), len(b))
    return intersection_size(a, b) / smaller if smaller else 1.0
