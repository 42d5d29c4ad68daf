"""Exact and MinHash-LSH near deduplication, in one process or as a multi-task run.

Passes, in order; a removed document names the first pass that found it a duplicate of an
earlier document (``reason``) and its cluster's survivor (``dup_of``):

1. ``dedup:exact``: equal :func:`~pretrain.data.dedup_exact.exact_key` (lower-cased text,
   whitespace collapsed).
2. ``dedup:minhash``: FineWeb's MinHash-LSH (reference/data.md §1.2, §1.4): word 5-grams, a
   112-permutation signature cut into 14 bands of 8 rows; one shared band makes a pair, with
   probability ``1 - (1 - s**8)**14`` at Jaccard ``s`` (0.56 at 0.7, 0.92 at 0.8, 0.99 at 0.85),
   without verification.
3. ``dedup:minhash_verified``: a permissive LSH over the same signature (more bands of fewer
   rows, :meth:`DedupConfig.verify_banding`) finds pairs down to a lower Jaccard; each candidate
   is kept only if the *exact* Jaccard of the two documents' 5-gram sets reaches
   ``verify_threshold``, or the smaller set's containment in the larger reaches
   ``containment_threshold`` (a copy with a boilerplate line added). text-dedup's
   ``check_false_positive`` does the same check (reference/data.md §3.2). This catches heavily
   edited copies that a single unverified pass must miss to stay precise.

Clustering: the pairs of all passes go into one union-find (:mod:`pretrain.data.union_find`);
each cluster keeps its first document in input order, so the result does not depend on the
number of tasks, nor on the order pairs are found in.

Multi-task flow (datatrove's signature -> buckets -> cluster -> filter, reference/data.md §1.2;
runs under any executor through ``--num-tasks/--task-index``, :mod:`pretrain.data.dedup_cli`):

1. every task ``k`` of ``N``: :func:`write_task_signatures` on its shard, as ``(global index,
   document)`` pairs (:func:`shard_documents`: documents ``i`` with ``i % N == k``). Documents
   stream through in batches of ``batch_size``; only the current batch's texts are held. It
   writes ``WORK/task_KKKKK/`` (built under a ``.tmp`` name and renamed when whole): raw
   little-endian arrays, no header (like datatrove's ``.ds``), aligned row by row:

   * ``index.i64``: the documents' global indices (increasing); ``ids.jsonl``: their ids;
   * ``exact.u64``: exact keys; ``minhash_band_BBB.u64`` and ``verified_band_BBB.u64``: one
     key per document per band (:func:`~pretrain.data.minhash.band_keys`);
   * ``signatures.u32``: the full signatures (``num_perm`` per row), for a cheap first check;
   * ``shingles.u32`` + ``shingle_ends.i64``: each document's sorted distinct shingle hashes
     and the end offset of each document's run, for exact verification;
   * ``meta.json``: task, document count, config; its presence marks the task complete.
2. one task: :func:`cluster_duplicates` reads the band files one band at a time, turns each
   bucket into pairs (:func:`~pretrain.data.lsh.bucket_pairs`) over dense positions (global
   indices in sorted order), builds the union-find, verifies the permissive pass's pairs from
   the memory-mapped shingle files, and writes ``WORK/removed.jsonl`` (``{"index", "id",
   "reason", "dup_of"}`` by index). Memory: a few ints per document, one band at a time,
   the candidate pairs, and the ids of removed documents and their survivors.
3. every task: :func:`apply_removals` re-reads its shard and drops the removed indices.

:func:`find_duplicates` and :func:`deduplicate` run the three steps in one process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.data.dedup_exact import EXACT_REASON, exact_key
from pretrain.data.lsh import bucket_pairs, containment_sorted, jaccard_sorted
from pretrain.data.minhash import (
    Permutations,
    ShingleHasher,
    band_keys,
    bands_rows_for_threshold,
    estimated_jaccard,
    unique_per_document,
)
from pretrain.data.readers import Document
from pretrain.data.union_find import UnionFind

MINHASH_REASON = "dedup:minhash"
VERIFIED_REASON = "dedup:minhash_verified"
REASONS = (EXACT_REASON, MINHASH_REASON, VERIFIED_REASON)  # code i + 1 in cluster arrays
REMOVED_FILE = "removed.jsonl"


@dataclass(frozen=True)
class DedupConfig:
    """Settings of the three passes; the defaults are the library's (and the bench's).

    Verified pass: ``verify_threshold = 0.4`` is the middle of the band that dirty/'s builder
    left empty of unrelated pairs (corpora/README.md): it removed clean chunks at 5-gram
    Jaccard >= 0.3 as natural near-duplicates, generated junk below 0.3, and no unlabelled
    pair reaches 0.5. A Jaccard of 0.4 means 4 in 7 of the two texts' 5-grams are shared.
    The banding targets half of it (``verify_lsh_threshold = 0.2``: 28 x 2 for 112
    permutations), so a pair at Jaccard 0.4 becomes a candidate with probability 0.992 (0.974
    at 0.35); false candidates cost only a check. Containment (off by default) accepts a copy
    buried in much longer boilerplate, which Jaccard >= 0.4 misses only when the added text is
    over 1.5 times the original; it needs ``containment_min_shingles`` in the smaller set, as
    a short text contained in a long one is a quotation as often as a copy.
    """

    exact: bool = True
    ngram: int = 5
    num_perm: int = 112
    seed: int = 1
    # The FineWeb pass: 14 x 8, threshold about (1/14)**(1/8) = 0.72.
    minhash: bool = True
    bands: int = 14
    rows: int = 8
    # The verified pass.
    verify: bool = True
    verify_threshold: float = 0.4
    verify_lsh_threshold: float = 0.2
    verify_bands: int | None = None  # both None: bands_rows_for_threshold(verify_lsh_threshold)
    verify_rows: int | None = None
    containment_threshold: float | None = None
    containment_min_shingles: int = 50
    all_pairs_max: int = 32
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.minhash and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} > num_perm = "
                             f"{self.num_perm}")  # fmt: skip
        if (self.verify_bands is None) != (self.verify_rows is None):
            raise ValueError("set both verify_bands and verify_rows, or neither")
        if self.verify:
            bands, rows = self.verify_banding()
            if bands * rows > self.num_perm:
                raise ValueError(f"verify bands * rows = {bands * rows} > num_perm")
        for name in ("verify_threshold", "verify_lsh_threshold", "containment_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def verify_banding(self) -> tuple[int, int]:
        """``(bands, rows)`` of the verified pass."""
        if self.verify_bands is not None and self.verify_rows is not None:
            return self.verify_bands, self.verify_rows
        return bands_rows_for_threshold(self.verify_lsh_threshold, self.num_perm)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DedupConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown dedup settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**values)


def shard_documents(
    docs: Iterable[Document], num_tasks: int = 1, task_index: int = 0
) -> Iterator[tuple[int, Document]]:
    """``(global index, document)`` for the documents ``i`` with ``i % num_tasks == task_index``.

    Any other split works too (e.g. by file, with indices ``file << 40 | line``) as long as
    indices are distinct, increasing within a task, and ordered like the input.
    """
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index must be in [0, {num_tasks}), got {task_index}")
    for i, doc in enumerate(docs):
        if i % num_tasks == task_index:
            yield i, doc


def _task_dir(work_dir: Path, task_index: int) -> Path:
    return work_dir / f"task_{task_index:05d}"


def write_task_signatures(
    indexed_docs: Iterable[tuple[int, Document]],
    work_dir: str | Path,
    task_index: int = 0,
    num_tasks: int = 1,
    config: DedupConfig = DedupConfig(),
) -> Path:
    """Step 1 for one task: hash its documents and write its band, signature and shingle files.

    Returns the task directory. A task directory already complete is replaced.
    """
    work_dir = Path(work_dir)
    final = _task_dir(work_dir, task_index)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hasher = ShingleHasher(config.ngram)
    perms = Permutations(config.num_perm, config.seed)
    verify_bands, verify_rows = config.verify_banding()
    files: dict[str, Any] = {}

    def append(name: str, array: np.ndarray) -> None:
        if name not in files:
            files[name] = open(tmp / name, "wb")  # noqa: SIM115 - closed below
        files[name].write(np.ascontiguousarray(array).tobytes())

    num_docs, last, shingle_end = 0, -1, 0
    try:
        it = iter(indexed_docs)
        while batch := list(islice(it, config.batch_size)):
            index = np.fromiter((i for i, _ in batch), np.int64, len(batch))
            if index[0] <= last or np.any(np.diff(index) <= 0):
                raise ValueError(f"task {task_index}: document indices must increase")
            last = int(index[-1])
            texts = [doc["text"].lower() for _, doc in batch]
            hashes, counts = hasher.batch(texts, lowered=True)
            append("index.i64", index)
            append("ids.jsonl", "".join(json.dumps(d["id"]) + "\n" for _, d in batch).encode())
            if config.exact:
                keys = [exact_key(text, lowered=True) for text in texts]
                append("exact.u64", np.array(keys, np.uint64))
            if config.minhash or config.verify:
                signatures = perms.signatures(hashes, counts)
            if config.minhash:
                for b, keys in enumerate(band_keys(signatures, config.bands, config.rows).T):
                    append(f"minhash_band_{b:03d}.u64", keys)
            if config.verify:
                for b, keys in enumerate(band_keys(signatures, verify_bands, verify_rows).T):
                    append(f"verified_band_{b:03d}.u64", keys)
                append("signatures.u32", signatures)
                sets, sizes = unique_per_document(hashes, counts)
                ends = shingle_end + np.cumsum(sizes)
                shingle_end = int(ends[-1])
                append("shingles.u32", sets)
                append("shingle_ends.i64", ends)
            num_docs += len(batch)
    finally:
        for f in files.values():
            f.close()
    meta = {"task_index": task_index, "num_tasks": num_tasks, "num_docs": num_docs,
            "config": asdict(config)}  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


class _Task:
    """One task's files, memory-mapped, and its rows' dense positions in the whole input."""

    def __init__(self, path: Path):
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        self.num_docs = self.meta["num_docs"]
        self._maps: dict[str, np.ndarray] = {}
        self.index = self.read("index.i64", np.int64)
        self.dense = np.empty(0, np.int64)

    def read(self, name: str, dtype: type, columns: int = 1) -> np.ndarray:
        if self.num_docs == 0:
            return np.empty((0, columns) if columns > 1 else 0, dtype)
        if name not in self._maps:
            dtype = np.dtype(dtype).newbyteorder("<")
            self._maps[name] = np.memmap(self.path / name, dtype=dtype, mode="r")
        array = self._maps[name]
        return array.reshape(-1, columns) if columns > 1 else array

    def shingle_set(self, row: int) -> np.ndarray:
        ends = self.read("shingle_ends.i64", np.int64)
        start = int(ends[row - 1]) if row else 0
        return np.asarray(self.read("shingles.u32", np.uint32)[start : int(ends[row])])

    def set_sizes(self, rows: np.ndarray) -> np.ndarray:
        ends = np.r_[0, self.read("shingle_ends.i64", np.int64)]
        return ends[rows + 1] - ends[rows]


def _load_tasks(work_dir: Path) -> tuple[list[_Task], DedupConfig]:
    found = sorted(p for p in work_dir.glob("task_*") if (p / "meta.json").exists())
    if not found:
        raise FileNotFoundError(f"{work_dir}: no complete task_* directory (run step 1 first)")
    tasks = [_Task(p) for p in found]
    num_tasks = tasks[0].meta["num_tasks"]
    indices = sorted(t.meta["task_index"] for t in tasks)
    if indices != list(range(num_tasks)) or any(t.meta["num_tasks"] != num_tasks for t in tasks):
        missing = sorted(set(range(num_tasks)) - set(indices))
        raise ValueError(f"{work_dir}: expected tasks 0..{num_tasks - 1} of one run, "
                         f"missing {missing[:10]}, found {indices[:10]}")  # fmt: skip
    configs = {json.dumps(t.meta["config"], sort_keys=True) for t in tasks}
    if len(configs) > 1:
        raise ValueError(f"{work_dir}: tasks were run with different dedup configs")
    return tasks, DedupConfig.from_dict(tasks[0].meta["config"])


class _Clusters:
    """Union-find over dense positions plus the pass that first made each one a duplicate."""

    def __init__(self, size: int):
        self.uf = UnionFind(size)
        self.reason = np.zeros(size, np.int8)

    def add(self, pairs: np.ndarray, code: int) -> None:
        absorbed = self.uf.union_pairs(pairs)
        fresh = [x for x in absorbed if self.reason[x] == 0]
        self.reason[fresh] = code


def cluster_duplicates(work_dir: str | Path) -> list[dict[str, Any]]:
    """Step 2, one task: merge all tasks' bucket files, cluster, write the removal list.

    Returns ``{"index", "id", "reason", "dup_of"}`` per removed document, by index.
    """
    work_dir = Path(work_dir)
    tasks, config = _load_tasks(work_dir)
    index = np.concatenate([t.index for t in tasks])
    order = np.sort(index)
    if len(order) > 1 and np.any(order[1:] == order[:-1]):
        raise ValueError(f"{work_dir}: a global document index appears in more than one task")
    for t in tasks:
        t.dense = np.searchsorted(order, t.index)
    size = len(order)
    positions = np.arange(size, dtype=np.int64)

    def column(name: str) -> np.ndarray:
        keys = np.empty(size, np.uint64)
        for t in tasks:
            keys[t.dense] = t.read(name, np.uint64)
        return keys

    clusters = _Clusters(size)
    if config.exact:
        clusters.add(bucket_pairs(column("exact.u64"), positions), 1)
    if config.minhash:
        for b in range(config.bands):
            clusters.add(bucket_pairs(column(f"minhash_band_{b:03d}.u64"), positions), 2)
    if config.verify:
        _verified_pass(tasks, config, clusters, column, positions)

    removed = np.flatnonzero(clusters.reason)
    survivors = np.array([clusters.uf.find(int(x)) for x in removed], np.int64)
    ids = _ids_of(tasks, set(removed.tolist()) | set(survivors.tolist()))
    records = [
        {
            "index": int(order[x]),
            "id": ids[x],
            "reason": REASONS[clusters.reason[x] - 1],
            "dup_of": ids[s],
        }  # fmt: skip
        for x, s in zip(removed.tolist(), survivors.tolist(), strict=True)
    ]
    tmp = work_dir / (REMOVED_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.rename(work_dir / REMOVED_FILE)
    return records


def _verified_pass(tasks, config, clusters, column, positions) -> None:
    """Pairs from the permissive banding, kept when their exact 5-gram sets agree enough."""
    bands, _ = config.verify_banding()
    pairs = [bucket_pairs(column(f"verified_band_{b:03d}.u64"), positions, config.all_pairs_max)
             for b in range(bands)]  # fmt: skip
    size = len(positions)
    codes = np.unique(np.concatenate([p[:, 0] * size + p[:, 1] for p in pairs]))
    if not len(codes):
        return
    pairs = np.stack(np.divmod(codes, size), axis=1)
    task_of = np.empty(len(positions), np.int32)
    row_of = np.empty(len(positions), np.int64)
    for k, t in enumerate(tasks):
        task_of[t.dense] = k
        row_of[t.dense] = np.arange(t.num_docs)
    pairs = pairs[_plausible(pairs, tasks, task_of, row_of, config)]
    find = clusters.uf.find
    verified = []
    for a, b in pairs.tolist():
        if find(a) == find(b):
            continue
        set_a = tasks[task_of[a]].shingle_set(int(row_of[a]))
        set_b = tasks[task_of[b]].shingle_set(int(row_of[b]))
        if _same_text(set_a, set_b, config):
            verified.append((a, b))
    clusters.add(np.array(verified, np.int64).reshape(-1, 2), 3)


def _same_text(set_a: np.ndarray, set_b: np.ndarray, config: DedupConfig) -> bool:
    """The verified pass's test on two sorted sets of distinct shingle hashes."""
    if jaccard_sorted(set_a, set_b) >= config.verify_threshold:
        return True
    c = config.containment_threshold
    return (
        c is not None
        and min(len(set_a), len(set_b)) >= config.containment_min_shingles
        and containment_sorted(set_a, set_b) >= c
    )


def _plausible(pairs, tasks, task_of, row_of, config) -> np.ndarray:
    """Mask of pairs whose signature agreement is within 4 sigma of passing verification.

    The lowest Jaccard that can pass is ``verify_threshold``, or, through containment ``c``
    with set sizes ``m <= n``, ``c m / (m + n - c m)``. The signature's estimate has standard
    deviation ``sqrt(J (1 - J) / num_perm)``; a pair more than 4 of them below the floor is
    dropped without reading its shingles (false drop under 1e-4 per true pair).
    """
    docs, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(pairs.shape)
    sizes = np.empty(len(docs), np.int64)
    signatures = np.empty((len(docs), config.num_perm), np.uint32)
    for k, t in enumerate(tasks):
        mine = np.flatnonzero(task_of[docs] == k)
        rows = row_of[docs[mine]]
        sizes[mine] = t.set_sizes(rows)
        signatures[mine] = t.read("signatures.u32", np.uint32, config.num_perm)[rows]
    agree = estimated_jaccard(signatures[local[:, 0]], signatures[local[:, 1]])
    floor = np.full(len(pairs), config.verify_threshold)
    if config.containment_threshold is not None:
        c = config.containment_threshold
        m = np.minimum(sizes[local[:, 0]], sizes[local[:, 1]])
        n = np.maximum(sizes[local[:, 0]], sizes[local[:, 1]])
        by_containment = np.where(m >= config.containment_min_shingles, c * m / (m + n - c * m), 1)
        floor = np.minimum(floor, by_containment)
    sigma = np.sqrt(floor * (1.0 - floor) / config.num_perm)
    return agree >= floor - 4.0 * sigma


def _ids_of(tasks: list[_Task], wanted: set[int]) -> dict[int, str]:
    ids: dict[int, str] = {}
    for t in tasks:
        if t.num_docs == 0:  # an empty input or a fully filtered part: no files written
            continue
        dense = t.dense.tolist()
        with open(t.path / "ids.jsonl", encoding="utf-8") as f:
            for row, line in enumerate(f):
                if dense[row] in wanted:
                    ids[dense[row]] = json.loads(line)
    return ids


def load_removals(work_dir: str | Path) -> list[dict[str, Any]]:
    """The removal list written by :func:`cluster_duplicates`."""
    with open(Path(work_dir) / REMOVED_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def apply_removals(
    indexed_docs: Iterable[tuple[int, Document]],
    work_dir: str | Path,
    removed: list[dict[str, Any]] | None = None,
) -> Iterator[Document]:
    """Step 3 for one task: yield the documents of its shard that survive dedup.

    Each dropped document's record is appended to ``removed``. A dropped index whose id differs
    from the record's raises ``ValueError``: the shard is not the one that was hashed.
    """
    records = {r["index"]: r for r in load_removals(work_dir)}
    for i, doc in indexed_docs:
        record = records.get(i)
        if record is None:
            yield doc
            continue
        if record["id"] != doc["id"]:
            raise ValueError(f"document {i} has id {doc['id']!r}, the removal list says "
                             f"{record['id']!r}: inputs differ from the hashed ones")  # fmt: skip
        if removed is not None:
            removed.append(record)


def find_duplicates(
    docs: Iterable[Document],
    config: DedupConfig = DedupConfig(),
    work_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Steps 1 and 2 in one process (one task); the removal records, by input order."""
    if work_dir is not None:
        write_task_signatures(shard_documents(docs), work_dir, 0, 1, config)
        return cluster_duplicates(work_dir)
    with tempfile.TemporaryDirectory(prefix="dedup-") as tmp:
        return find_duplicates(docs, config, tmp)


def deduplicate(
    docs: Sequence[Document], config: DedupConfig = DedupConfig()
) -> tuple[list[Document], list[dict[str, Any]]]:
    """Kept documents (input order) and removal records of an in-memory list of documents."""
    removed = find_duplicates(docs, config)
    gone = {r["index"] for r in removed}
    return [d for i, d in enumerate(docs) if i not in gone], removed
