"""MinHash signatures of word n-gram shingles, vectorized with numpy.

Shingles (Broder 1997, "On the resemblance and containment of documents"): the text is
lower-cased and split into ``\\w+`` words, the same words as :func:`pretrain.data.score.
word_ngrams`, so the Jaccard these signatures estimate is the one the scorer measures. A text
with fewer than ``n`` words is one shingle (all its words). Unlike datatrove's
``simplify_text`` (reference/data.md §1.2) digits and diacritics are kept as they are.

Hashing, once per shingle:

* each distinct word is hashed once to 64 bits with BLAKE2b (deterministic across processes,
  unlike Python's salted ``hash``) and cached;
* a shingle is the polynomial ``((w0*M + w1)*M + ...)`` of its word hashes modulo 2**64,
  passed through the splitmix64 finalizer (Steele et al. 2014) and cut to its top 32 bits.

Permutations: ``h_i(x) = ((a_i * x + b_i) mod 2**64) >> 32`` with ``a_i, b_i`` uniform 64-bit
ints from ``numpy.random.default_rng(seed)``. This is Dietzfelbinger's multiply-add-shift
scheme (STACS 1996), strongly universal from 32-bit keys to 32-bit values with only 64-bit
arithmetic. It plays the role of datatrove's and datasketch's ``(a*x + b) mod (2**61 - 1)``
(reference/data.md §1.2, §4) and rensa's multiply-shift, without the slow integer modulo. All
permutations of a batch of shingles are one ``(num_perm, num_shingles)`` array operation, in
chunks small enough to stay in cache; the signature is the per-document minimum.

Banding (Leskovec, Rajaraman, Ullman, *Mining of Massive Datasets*, ch. 3): a signature of
``bands * rows`` values is cut into ``bands`` slices; two documents whose slices agree in at
least one band are a candidate pair, with probability ``P(s) = 1 - (1 - s**rows)**bands`` at
Jaccard ``s``. :func:`bands_rows_for_threshold` picks ``(bands, rows)`` for a target threshold
as datasketch's ``_optimal_param`` does (copied by text-dedup, reference/data.md §3.2, §4).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"\w+")
_MASK64 = (1 << 64) - 1
_M = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio), polynomial base
_SHIFT = np.uint64(32)
# Shingles per chunk in the permutation step: (num_perm x CHUNK) uint64 stays near 8 MB for
# 112 permutations, which measured 3x faster than 64 Ki shingles per chunk (cache misses).
CHUNK_SHINGLES = 8192
# Characters per group when hashing words: uint64 per-character arrays of about 8 MB.
BATCH_CHARS = 1 << 20


def _splitmix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele, Lea, Flood 2014), in place on a uint64 array."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@lru_cache(maxsize=1)
def _word_char_table() -> np.ndarray:
    """``table[code point]`` is True for the characters ``re``'s ``\\w`` matches in a str.

    Built with the same regex the scorer uses, so tokenization is identical by construction.
    """
    table = np.zeros(0x110000, bool)
    for match in _WORD.finditer("".join(map(chr, range(0x110000)))):
        table[match.start() : match.end()] = True
    return table


def _powers(base: int, count: int) -> np.ndarray:
    """``base**k mod 2**64`` for ``k < count`` (uint64 products wrap modulo 2**64)."""
    out = np.empty(count, np.uint64)
    out[:] = np.uint64(base)
    out[0] = 1
    return np.cumprod(out, out=out)


class ShingleHasher:
    """Texts -> 32-bit hashes (in uint64 arrays) of their lower-cased word n-grams.

    Vectorized over a whole batch: the lower-cased texts are joined with ``"\\n"`` (not a word
    character) and read as UTF-32 code points; :func:`_word_char_table` marks word characters,
    so words are the same as ``re.findall(r"\\w+", text.lower())``. A word's hash is the
    polynomial ``sum_j c_j * B**-j mod 2**64`` of its code points ``c_j`` (prefix sums of
    ``c_k * B**-k``, re-based by ``B**start``; ``B`` odd, so invertible modulo 2**64) through
    splitmix64. Such polynomials collide for adversarial strings of thousands of characters
    (Thue-Morse words), which here could only merge two rare shingles.
    """

    def __init__(self, ngram: int = 5):
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.ngram = ngram
        self._inverse_powers = _powers(pow(int(_M), -1, 1 << 64), 1)
        self._powers = _powers(int(_M), 1)

    def _power_tables(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._powers) < count:
            count = max(count, 2 * len(self._powers))
            self._inverse_powers = _powers(pow(int(_M), -1, 1 << 64), count)
            self._powers = _powers(int(_M), count)
        return self._inverse_powers, self._powers

    def word_hashes(
        self, texts: Sequence[str], lowered: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of all words of ``texts`` in order, and the number of words per text."""
        joined = "\n".join(texts)
        joined = joined if lowered else joined.lower()
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
        is_word = _word_char_table()[points]
        edges = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        inverse, forward = self._power_tables(len(points) + 1)
        prefix = np.zeros(len(points) + 1, np.uint64)
        np.cumsum(points.astype(np.uint64) * inverse[: len(points)], out=prefix[1:])
        hashes = _splitmix64((prefix[ends] - prefix[starts]) * forward[starts])
        # Text i spans code points [text_starts[i], text_starts[i + 1]) of ``joined``; lower()
        # may change lengths, so the spans come from the newlines that joined the texts.
        breaks = np.flatnonzero(points == 10)
        seps = np.cumsum([t.count("\n") for t in texts[:-1]]) + np.arange(len(texts) - 1)
        text_starts = np.r_[0, breaks[seps] + 1] if len(texts) > 1 else np.zeros(1, np.int64)
        counts = np.diff(np.r_[np.searchsorted(starts, text_starts), len(starts)])
        return hashes, counts

    def batch(self, texts: Sequence[str], lowered: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of all ``texts`` (concatenated, document order) and counts per text.

        A text of ``w >= n`` words has ``w - n + 1`` shingles (repeats included); a shorter one
        has one, from all its words (the scorer's ``word_ngrams`` convention). Texts are
        processed in groups of about :data:`BATCH_CHARS` characters (arrays stay in cache);
        ``lowered=True`` says they are lower-cased already.
        """
        if not texts:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        group = np.cumsum(lengths) // BATCH_CHARS
        cuts = np.flatnonzero(np.diff(group)) + 1
        if not len(cuts):
            return self._batch(texts, lowered)
        parts = [
            self._batch(texts[a:b], lowered)
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(texts)], strict=True)
        ]
        return np.concatenate([h for h, _ in parts]), np.concatenate([c for _, c in parts])

    def _batch(self, texts: Sequence[str], lowered: bool) -> tuple[np.ndarray, np.ndarray]:
        words, counts = self.word_hashes(texts, lowered)
        n = self.ngram
        ends = np.cumsum(counts)
        shingle_counts = np.maximum(counts - n + 1, 1)
        total = max(len(words) - n + 1, 0)
        acc = words[:total].copy()
        for k in range(1, n):
            acc *= _M
            acc += words[k : k + total]
        # Full n-grams start at word i of a text when i + n <= the text's end.
        owner = np.repeat(np.arange(len(texts)), counts)[:total]
        full = acc[np.arange(total) + n <= ends[owner]] if total else acc
        out = np.empty(int(shingle_counts.sum()), np.uint64)
        short = np.flatnonzero(counts < n)
        at = np.cumsum(shingle_counts) - shingle_counts
        long_mask = np.ones(len(out), bool)
        long_mask[at[short]] = False
        out[long_mask] = full
        for i in short.tolist():  # fewer than n words: one shingle of all of them
            h = int(counts[i])
            for w in words[ends[i] - counts[i] : ends[i]].tolist():
                h = (h * int(_M) + w) & _MASK64
            out[at[i]] = h
        return _splitmix64(out) >> _SHIFT, shingle_counts

    def __call__(self, text: str) -> np.ndarray:
        """Shingle hashes of one text, in document order (not deduplicated), at least one."""
        return self._batch([text], lowered=False)[0]


def unique_per_document(hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's sorted distinct 32-bit hashes (concatenated) and their counts."""
    owner = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
    keys = np.sort((owner << _SHIFT) | hashes)
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    sizes = np.bincount((keys >> _SHIFT).astype(np.int64), minlength=len(counts))
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), sizes


class Permutations:
    """``num_perm`` multiply-add-shift hash functions drawn from ``seed``."""

    def __init__(self, num_perm: int, seed: int = 1):
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.seed = seed
        self.a = rng.integers(0, 1 << 64, size=(num_perm, 1), dtype=np.uint64, endpoint=False)
        self.b = rng.integers(0, 1 << 64, size=(num_perm, 1), dtype=np.uint64, endpoint=False)
        self._buffer = np.empty((num_perm, CHUNK_SHINGLES), np.uint64)

    def _hash_into(self, x: np.ndarray) -> np.ndarray:
        out = self._buffer[:, : len(x)] if len(x) <= CHUNK_SHINGLES else None
        out = np.multiply(self.a, x[None, :], out=out)
        out += self.b
        out >>= _SHIFT
        return out

    def signatures(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """MinHash signatures ``(len(counts), num_perm)`` uint32 of concatenated shingle hashes.

        ``counts[i] >= 1`` hashes belong to document ``i``. Documents are grouped into chunks
        of about :data:`CHUNK_SHINGLES` shingles, each one ``(num_perm, chunk)`` array
        operation and one ``minimum.reduceat``; a longer document is folded chunk by chunk.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if np.any(counts < 1):
            raise ValueError("every document needs at least one shingle")
        out = np.empty((len(counts), self.num_perm), np.uint32)
        ends = np.cumsum(counts)
        i = 0
        while i < len(counts):
            begin = ends[i] - counts[i]
            if counts[i] > CHUNK_SHINGLES:
                acc = np.full(self.num_perm, 1 << 32, np.uint64)
                for start in range(begin, ends[i], CHUNK_SHINGLES):
                    chunk = hashes[start : min(start + CHUNK_SHINGLES, ends[i])]
                    np.minimum(acc, self._hash_into(chunk).min(axis=1), out=acc)
                out[i] = acc
                i += 1
                continue
            j = int(np.searchsorted(ends, begin + CHUNK_SHINGLES, side="right"))
            hashed = self._hash_into(hashes[begin : ends[j - 1]])
            out[i:j] = np.minimum.reduceat(hashed, ends[i:j] - counts[i:j] - begin, axis=1).T
            i = j
        return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal signature values (last axis): the MinHash estimate of Jaccard.

    Its standard deviation is ``sqrt(J * (1 - J) / num_perm)`` (Broder 1997): each value
    agrees with probability J, independently across permutations.
    """
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): a hash of the band's ``rows`` values.

    Uses the first ``bands * rows`` signature columns. Keys of equal bands are equal; unequal
    bands collide with probability about 2**-64.
    """
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, "
                         f"the signatures have {num_perm}")  # fmt: skip
    sliced = signatures[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    keys = np.full((n, bands), rows, np.uint64)
    for r in range(rows):
        keys *= _M
        keys += sliced[:, :, r]
    return _splitmix64(keys)


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents of Jaccard ``s`` share a band: ``1 - (1 - s^r)^b``."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


@lru_cache(maxsize=256)
def bands_rows_for_threshold(
    threshold: float,
    num_perm: int,
    fp_weight: float = 0.5,
    fn_weight: float = 0.5,
    grid: int = 2000,
) -> tuple[int, int]:
    """The ``(bands, rows)`` with ``bands * rows <= num_perm`` that minimize weighted error.

    Error is ``fp_weight * integral_0^t P(s) ds + fn_weight * integral_t^1 (1 - P(s)) ds``:
    the false-positive and false-negative probability mass around threshold ``t``, as in
    datasketch ``lsh._optimal_param`` (used by text-dedup's ``optimal_param``; reference/
    data.md §4). datasketch integrates with ``scipy.integrate.quad``; here the midpoint rule
    on ``grid`` points, vectorized. Ties keep the first (smallest ``bands``) as datasketch's
    strict ``<`` does. Example: ``(0.8, 128) -> (9, 13)``, ``(0.9, 128) -> (5, 25)``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    below = (np.arange(grid) + 0.5) / grid * threshold
    above = threshold + (np.arange(grid) + 0.5) / grid * (1.0 - threshold)
    best, best_error = (1, 1), np.inf
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1)[:, None]
        fp = np.mean(candidate_probability(below, b, r), axis=1) * threshold
        fn = np.mean((1.0 - above**r) ** b, axis=1) * (1.0 - threshold)
        error = fp_weight * fp + fn_weight * fn
        i = int(np.argmin(error))
        if error[i] < best_error:
            best, best_error = (b, i + 1), float(error[i])
    return best
