"""Packed, shuffled, rank-sharded, exactly resumable batches of token windows.

Packing follows OLMo's memmap dataset: the EOS-separated documents of a split are read as one
token stream (shards in manifest order) and cut into fixed windows of ``seq_len + 1`` tokens
with stride ``seq_len``, so window ``i`` holds tokens ``[i*T, i*T + T + 1)`` and every token is
a prediction target exactly once per epoch. Each position also carries the id of the document
it belongs to, for document masking.

Order: epoch ``e`` visits every window once, in the permutation drawn by
``numpy.random.default_rng([seed, e])``; epochs follow each other into one infinite stream of
global samples ``k = 0, 1, 2, ...``. Rank ``r`` of ``W`` takes samples ``k = r, r + W, ...``,
so ranks never overlap and together leave no gap. Several shard sets are blended by weights
through :class:`~pretrain.data.mixture.WeightedInterleave`, each with its own stream.

Resume: ``state_dict()`` holds the number of global samples consumed; loading it continues at
exactly the next sample, also with another number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.data.mixture import WeightedInterleave
from pretrain.data.shards import OpenShard, ShardError, open_split

STATE_VERSION = 1


@dataclass(frozen=True)
class TokenBatch:
    """What the loader hands an objective (DESIGN.md §3).

    Attributes:
        tokens: ``(B, T+1)`` int64 token windows.
        document_ids: ``(B, T+1)`` int64 global document index of each position.
        source_ids: ``(B,)`` int64 index of the blended shard set each window came from.
        sample_ids: ``(B,)`` int64 global sample number of each window.
    """

    tokens: torch.Tensor
    document_ids: torch.Tensor
    source_ids: torch.Tensor
    sample_ids: torch.Tensor


class PackedWindows:
    """Fixed windows of ``seq_len + 1`` tokens over the documents of one split."""

    def __init__(self, shards: list[OpenShard], seq_len: int, where: str = ""):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.shards = shards
        self.seq_len = seq_len
        sizes = np.array([s.info.num_tokens for s in shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes)])
        docs = np.array([s.info.num_documents for s in shards], dtype=np.int64)
        self.doc_offsets = np.concatenate([[0], np.cumsum(docs)])
        self.num_tokens = int(self.shard_starts[-1])
        self.num_windows = max(0, (self.num_tokens - 1) // seq_len)
        if self.num_windows == 0:
            raise ShardError(
                f"{where}: {self.num_tokens} tokens, too few for one window of "
                f"{seq_len + 1} tokens (the objective reads {seq_len} + 1 a window: for span "
                "corruption more than train.seq_len, as the noise it removes shortens it)"
            )

    def read(self, window: int, tokens_out: np.ndarray, docs_out: np.ndarray) -> None:
        """Fill ``tokens_out``/``docs_out`` (length T+1) with window ``window``."""
        start = window * self.seq_len
        end = start + self.seq_len + 1
        k = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        filled = 0
        while start < end:
            shard = self.shards[k]
            local_start = start - int(self.shard_starts[k])
            local_end = min(end, int(self.shard_starts[k + 1])) - int(self.shard_starts[k])
            n = local_end - local_start
            tokens_out[filled : filled + n] = shard.tokens[local_start:local_end]
            docs_out[filled : filled + n] = self._doc_ids(k, local_start, local_end)
            filled += n
            start += n
            k += 1

    def _doc_ids(self, k: int, local_start: int, local_end: int) -> np.ndarray:
        ends = self.shards[k].ends
        first = int(np.searchsorted(ends, local_start, side="right"))
        last = int(np.searchsorted(ends, local_end - 1, side="right"))
        marks = np.zeros(local_end - local_start, dtype=np.int64)
        marks[ends[first:last] - local_start] = 1
        marks[0] += first + int(self.doc_offsets[k])
        return np.cumsum(marks)


class EpochPermutation:
    """Window order of each epoch: a permutation seeded by (seed, epoch), or identity."""

    def __init__(self, num_windows: int, seed: int, shuffle: bool = True):
        self.num_windows = num_windows
        self.seed = seed
        self.shuffle = shuffle
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.num_windows)
        if not self.shuffle:
            return offsets
        out = np.empty_like(offsets)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))[offsets[sel]]
        return out

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng([self.seed, epoch])
            self._cache[epoch] = rng.permutation(self.num_windows)
        return self._cache[epoch]


class TokenLoader:
    """Iterator of :class:`TokenBatch` over one or several blended shard directories.

    Args:
        paths: one shard directory, or several to blend.
        seq_len: tokens per training sequence T (windows hold T+1).
        micro_batch_size: windows per batch on this rank.
        split: which split of each directory to read.
        weights: blend weights, one per path (default: equal).
        seed: shuffling seed; each blended source derives its own from it.
        rank, world_size: data-parallel position.
        shuffle: permute windows each epoch (``False`` reads in storage order, for eval).
        num_epochs: stop after this many epochs of the (first) source; ``None`` is endless.
        checksum: verify every shard's sha256 when opening.
        tokenizer_hash: refuse shards made with another tokenizer.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        seq_len: int,
        micro_batch_size: int,
        split: str = "train",
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        num_epochs: int | None = None,
        checksum: bool = True,
        tokenizer_hash: str | None = None,
    ):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("TokenLoader needs at least one shard directory")
        if weights is not None and len(weights) != len(paths):
            raise ValueError(f"{len(weights)} weights for {len(paths)} shard directories")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_epochs is not None and len(paths) > 1:
            raise ValueError("num_epochs applies to a single shard directory, not a blend")
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.sources: list[PackedWindows] = []
        self.orders: list[EpochPermutation] = []
        fingerprints = []
        for i, path in enumerate(paths):
            manifest, shards = open_split(path, split, checksum, tokenizer_hash)
            where = f"{Path(path) / 'manifest.json'} (split {split!r})"
            windows = PackedWindows(shards, seq_len, where)
            self.sources.append(windows)
            source_seed = seed if len(paths) == 1 else _derive_seed(seed, i)
            self.orders.append(EpochPermutation(windows.num_windows, source_seed, shuffle))
            fingerprints.append([s.info.sha256_bin for s in shards])
        self.interleave = WeightedInterleave(weights or [1.0] * len(paths))
        self.end = None if num_epochs is None else num_epochs * self.sources[0].num_windows
        self.fingerprint = hashlib.sha256(
            json.dumps(
                {
                    "sources": fingerprints,
                    "weights": self.interleave.weights.tolist(),
                    "seq_len": seq_len,
                    "split": split,
                    "seed": seed,
                    "shuffle": shuffle,
                }
            ).encode()
        ).hexdigest()
        self._base = 0  # global samples consumed before this rank's counter started
        self._taken = 0  # samples this rank has taken since then

    @property
    def num_windows(self) -> list[int]:
        return [s.num_windows for s in self.sources]

    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> TokenBatch:
        first = self._base + self.rank + self.world_size * self._taken
        samples = first + self.world_size * np.arange(self.micro_batch_size, dtype=np.int64)
        if self.end is not None:
            samples = samples[samples < self.end]
            if len(samples) == 0:
                raise StopIteration
        batch = self.batch_for(samples)
        self._taken += self.micro_batch_size
        return batch

    def batch_for(self, samples: np.ndarray) -> TokenBatch:
        """The batch holding the given global sample numbers (no state change)."""
        comps, local = self.interleave(samples)
        tokens = np.empty((len(samples), self.seq_len + 1), dtype=np.int64)
        docs = np.empty_like(tokens)
        for c in np.unique(comps):
            rows = np.nonzero(comps == c)[0]
            windows = self.orders[c](local[rows])
            for row, window in zip(rows, windows, strict=True):
                self.sources[c].read(int(window), tokens[row], docs[row])
        return TokenBatch(
            tokens=torch.from_numpy(tokens),
            document_ids=torch.from_numpy(docs),
            source_ids=torch.from_numpy(comps),
            sample_ids=torch.from_numpy(samples),
        )

    def reset(self) -> None:
        """Start again from the first sample (for evaluating the same windows each time)."""
        self._base = 0
        self._taken = 0

    @property
    def num_samples_consumed(self) -> int:
        """Global samples consumed by all ranks, assuming they advance in lockstep."""
        return self._base + self._taken * self.world_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "num_samples_consumed": self.num_samples_consumed,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not supported")
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                "loader state was saved for other data, seq_len, split, seed or blend weights; "
                "resuming would not continue the same sample sequence"
            )
        self._base = int(state["num_samples_consumed"])
        self._taken = 0


def _derive_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
