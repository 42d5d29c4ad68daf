"""Union-find (disjoint sets) whose root is always the smallest member.

Duplicate pairs are transitive evidence: if A-B and B-C are pairs, A, B and C are one cluster
(datatrove ``MinhashDedupCluster``, text-dedup ``utils/union_find.py``; reference/data.md
§1.2, §3.2). Elements are dense ints in input order, and a union attaches the larger root
under the smaller, so every cluster's root is its first document in input order: the
survivor does not depend on the order in which pairs arrive, nor on how many tasks found
them. Path halving keeps ``find`` amortized O(log n) without ranks (Tarjan & van Leeuwen
1984).
"""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over ``0 .. size-1``; ``find(x)`` is the smallest member of x's set."""

    def __init__(self, size: int):
        self.parent = list(range(size))

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        """Join the sets of ``a`` and ``b``; the root that stopped being one, or -1 if none."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return -1
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return rb

    def union_pairs(self, pairs: np.ndarray) -> list[int]:
        """Union every row ``(a, b)`` of an ``(n, 2)`` int array; the roots that were absorbed.

        Whatever the order of the pairs, the resulting sets, and so the set of elements that are
        no longer roots, are the same.
        """
        absorbed = []
        for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
            root = self.union(a, b)
            if root >= 0:
                absorbed.append(root)
        return absorbed

    def roots(self) -> np.ndarray:
        """The root (smallest member of its set) of every element, as an int64 array."""
        return np.fromiter((self.find(x) for x in range(len(self.parent))), np.int64,
                           len(self.parent))  # fmt: skip

    def clusters(self) -> list[list[int]]:
        """Sets with more than one member, each sorted, ordered by their smallest member."""
        groups: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            groups.setdefault(self.find(x), []).append(x)
        return [members for _, members in sorted(groups.items()) if len(members) > 1]
