"""Deterministic weighted interleaving of several sample streams.

Megatron-LM's ``build_blending_indices`` (``megatron/core/datasets/helpers.cpp``) assigns sample
``n`` to the dataset with the largest error ``w_i * (n + 1) - count_i``: a low-discrepancy
interleave in which each dataset's realized count stays within one sample of ``w_i * n``.

Megatron builds that index for the whole run up front. Here the same greedy rule fills one
period of ``period`` samples and the pattern repeats, so the dataset and local index of any
global sample are found in O(1) (for exact resume and rank striding), whatever the run length.
Within a period every count is within one sample of its target, so realized proportions are
within ``1 / period`` of the weights over whole periods.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_PERIOD = 1 << 16


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError("mixture weights must be a non-empty list of numbers")
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"mixture weights must be finite, >= 0 and not all 0; got {list(weights)}")
    return w / w.sum()


class WeightedInterleave:
    """Maps a global sample number to ``(component, index within component)``."""

    def __init__(self, weights: Sequence[float], period: int = DEFAULT_PERIOD):
        self.weights = normalize_weights(weights)
        self.period = period
        num = len(self.weights)
        counts = [0] * num
        w = self.weights.tolist()
        components = np.empty(period, dtype=np.int64)
        local = np.empty(period, dtype=np.int64)
        for n in range(period):
            best, best_err = 0, -np.inf
            for i in range(num):
                err = w[i] * (n + 1) - counts[i]
                if err > best_err:
                    best, best_err = i, err
            components[n] = best
            local[n] = counts[best]
            counts[best] += 1
        self.components = components
        self.local_in_period = local
        self.counts_per_period = np.asarray(counts, dtype=np.int64)

    def __call__(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For global sample numbers, return (component ids, indices within each component)."""
        samples = np.asarray(samples, dtype=np.int64)
        block, offset = np.divmod(samples, self.period)
        comp = self.components[offset]
        return comp, block * self.counts_per_period[comp] + self.local_in_period[offset]
