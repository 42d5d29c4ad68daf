"""Gopher quality and repetition rules (Rae et al. 2021, arXiv 2112.11446, App. A.1.1, Table A1).

Thresholds are the paper's, as datatrove's ``GopherQualityFilter`` and
``GopherRepetitionFilter`` implement them (see ``reference/data.md`` §2.1). Differences
in *measurement* (never in threshold) and why:

* Words are whitespace tokens (as in dolma's Gopher tagger), not nltk ``word_tokenize``
  tokens, for speed; edge punctuation is left out of word lengths so mean word length
  matches the tokenized value (:class:`~pretrain.data.text_view.TextView`).
* Line ratios (bullets, ellipses, duplicate lines) are over non-empty lines: blank lines
  separate paragraphs in books and docs and would otherwise count as duplicated lines.
  Lines and paragraphs without a word character (``* * *``, ``-----``) are separators and
  are not counted as duplicates either.
* Stop words are matched case-insensitively and counted once each: the paper asks for "at
  least two of" the eight words.
* Bullets are ``- * • ‣ ◦ ⁃ ● ▪ ∙ –`` followed by a space (datatrove checks ``•``/``-``,
  dolma ``*``/``-``; requiring the space keeps ``--option`` and ``-1`` out).
* Top n-gram fraction: characters of the most frequent n-gram (the longest among ties)
  times its count, over ``len(text)``, as datatrove.
* Duplicate n-gram fraction: the characters of the words covered by an n-gram occurrence
  seen before (every occurrence after the first, as datatrove), each character counted once
  where such occurrences overlap, over ``len(text)``. datatrove gets about the same by
  skipping n words after each hit of a greedy scan; covering instead makes the value exact
  to vectorize (n-grams are hashed to uint64 with numpy) and never larger for n+1 than for
  n, so the scan stops once it is under every remaining limit.

Technical documents (:mod:`pretrain.data.content_type`) skip the quality rules in
:data:`QUALITY_RULES_NOT_FOR_TECHNICAL` and all n-gram rules (reference documentation is
templated, "Return the decoded :class:`bytes`" for each function, so repeated n-grams are its
style), and their duplicate lines and paragraphs are counted over prose only: structural lines
(indented code and literal blocks, markup commands such as ``=item`` or ``.. versionadded::``;
:func:`~pretrain.data.content_type.is_structural`) and lines of fewer than
:data:`MIN_CONTENT_LINE_WORDS` words (``}``, ``else:``) repeat by syntax, not as content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pretrain.data.content_type import ContentType, is_structural
from pretrain.data.text_view import TextView, duplicates

__all__ = [
    "GopherQualityConfig",
    "GopherRepetitionConfig",
    "gopher_quality",
    "gopher_repetition",
    "QUALITY_RULES_NOT_FOR_TECHNICAL",
]

#: Quality rules a technical document skips: ``#`` is a comment or heading marker, ``...``
#: a REPL prompt or an elision in a signature, code tokens hold no letters, and identifiers,
#: paths and property names (``PyObject_RichCompareBool``, ``\p{Block=Cuneiform}``) are
#: longer than words. Too-short "words" (gibberish) still count against any document.
QUALITY_RULES_NOT_FOR_TECHNICAL = frozenset(
    {"max_mean_word_length", "hash_ratio", "ellipsis_ratio", "alpha_words_frac"}
)
MIN_CONTENT_LINE_WORDS = 3

_HAS_WORD = re.compile(r"\w")
_BULLETS = "-*\u2022\u2023\u25e6\u2043\u25cf\u25aa\u2219\u2013"
_BULLET_LINE = re.compile(rf"^[ \t]*[{_BULLETS}](?:[ \t]|$)", re.MULTILINE)
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|\u2026)[ \t]*$", re.MULTILINE)


@dataclass
class GopherQualityConfig:
    """Gopher quality thresholds; ``None`` turns a rule off."""

    enabled: bool = True
    # Rae et al. 2021 App. A.1.1: "between 50 and 100,000 words"; datatrove min/max_doc_words.
    min_words: int | None = 50
    max_words: int | None = 100_000
    # "mean word length is outside the range of 3 to 10 characters".
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    # "symbol-to-word ratio greater than 0.1 for either the hash symbol or the ellipsis".
    max_hash_ratio: float | None = 0.1
    max_ellipsis_ratio: float | None = 0.1
    # "more than 90% of lines starting with a bullet point, or more than 30% ending with an
    # ellipsis".
    max_bullet_lines_frac: float | None = 0.9
    max_ellipsis_lines_frac: float | None = 0.3
    # "80% of words in a document contain at least one alphabetic character".
    min_alpha_words_frac: float | None = 0.8
    # "at least two of the following English words: the, be, to, of, and, that, have, with".
    min_stop_words: int | None = 2
    stop_words: list[str] = field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"]
    )


@dataclass
class GopherRepetitionConfig:
    """Gopher repetition thresholds (Rae et al. 2021, Table A1): remove when above."""

    enabled: bool = True
    max_dup_line_frac: float | None = 0.30
    max_dup_para_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20
    max_dup_para_char_frac: float | None = 0.20
    # Table A1 "top n-gram character fraction" for n = 2, 3, 4.
    max_top_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    # Table A1 "duplicate n-gram character fraction" for n = 5..10.
    max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


def _above(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


def gopher_quality(view: TextView, ctype: ContentType, cfg: GopherQualityConfig) -> Iterator[str]:
    """Names of the Gopher quality rules ``view`` fails, in order (lazily: take the first)."""
    skip = QUALITY_RULES_NOT_FOR_TECHNICAL if ctype.technical else frozenset()
    n_words = view.n_words
    if _below(n_words, cfg.min_words):
        yield "min_words"
    if _above(n_words, cfg.max_words):
        yield "max_words"
    if n_words == 0:  # every rule below is a ratio to words; a wordless text has no value
        return
    mean_length = view.mean_word_length()
    if _below(mean_length, cfg.min_mean_word_length):
        yield "min_mean_word_length"
    if "max_mean_word_length" not in skip and _above(mean_length, cfg.max_mean_word_length):
        yield "max_mean_word_length"
    text = view.text
    if "hash_ratio" not in skip and _above(text.count("#") / n_words, cfg.max_hash_ratio):
        yield "hash_ratio"
    ellipses = text.count("...") + text.count("\u2026")
    if "ellipsis_ratio" not in skip and _above(ellipses / n_words, cfg.max_ellipsis_ratio):
        yield "ellipsis_ratio"
    n_lines = max(1, len(view.nonempty_lines))
    # Each line count is bounded by how often its mark occurs: the regex runs only when the
    # bound could pass the limit.
    limit = cfg.max_bullet_lines_frac
    if limit is not None and sum(map(text.count, _BULLETS)) > limit * n_lines:
        if len(_BULLET_LINE.findall(text)) / n_lines > limit:
            yield "bullet_lines_frac"
    limit = cfg.max_ellipsis_lines_frac
    if limit is not None and ellipses > limit * n_lines:
        if len(_ELLIPSIS_LINE.findall(text)) / n_lines > limit:
            yield "ellipsis_lines_frac"
    if "alpha_words_frac" not in skip and _below(
        view.n_alpha_tokens() / n_words, cfg.min_alpha_words_frac
    ):
        yield "alpha_words_frac"
    if cfg.min_stop_words is not None and _count_stop_words(text, cfg) < cfg.min_stop_words:
        yield "stop_words"


_STOP_WORD_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _count_stop_words(text: str, cfg: GopherQualityConfig) -> int:
    """Distinct stop words present (case-insensitive, whole words), stopping at the minimum."""
    key = tuple(cfg.stop_words)
    pattern = _STOP_WORD_PATTERNS.get(key)
    if pattern is None:
        words = "|".join(re.escape(w) for w in sorted(key, key=len, reverse=True))
        pattern = _STOP_WORD_PATTERNS[key] = re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.I)
    found: set[str] = set()
    for match in pattern.finditer(text):
        found.add(match.group().lower())
        if len(found) >= (cfg.min_stop_words or 0):
            break
    return len(found)


def _content(items: list[str], ctype: ContentType) -> list[str]:
    """The lines (or paragraphs) whose repetition is repeated content."""
    if not ctype.technical:
        # Lines and paragraphs without a word ("* * *", "-----") are separators.
        return [item for item in items if _HAS_WORD.search(item)]
    # Only prose repeats as content; code, markup and short lines repeat by syntax. A
    # paragraph is structural when its first line is (a code block, a POD command).
    margin = ctype.margin
    return [
        item
        for item in items
        if len(item.split(None, MIN_CONTENT_LINE_WORDS - 1)) == MIN_CONTENT_LINE_WORDS
        and not is_structural(item.partition("\n")[0], margin)
        and _HAS_WORD.search(item)
    ]


def gopher_repetition(
    view: TextView, ctype: ContentType, cfg: GopherRepetitionConfig
) -> Iterator[str]:
    """Names of the Gopher repetition rules ``view`` fails, in order (lazily)."""
    text_length = len(view.text)
    if not text_length:
        return
    for unit, items in (("para", view.paragraphs), ("line", view.nonempty_lines)):
        if len(set(items)) == len(items):
            continue  # nothing repeats (the common case): no need to sort out content
        items = _content(items, ctype)
        if items:
            n_dup, chars = duplicates(items)
            if _above(n_dup / len(items), getattr(cfg, f"max_dup_{unit}_frac")):
                yield f"dup_{unit}_frac"
            if _above(chars / text_length, getattr(cfg, f"max_dup_{unit}_char_frac")):
                yield f"dup_{unit}_char_frac"
    if not ctype.technical:
        yield from _ngram_repetition(view.tokens, text_length, cfg)


def _ngram_repetition(
    tokens: list[str], text_length: int, cfg: GopherRepetitionConfig
) -> Iterator[str]:
    """Top and duplicate n-gram rules, on uint64 hashes of the n-grams (numpy, no Python loop
    over tokens). Hash collisions (2^-64 per pair) are ignored."""
    if len(tokens) < 2:
        return
    hashes = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    cum = np.concatenate(([0], np.cumsum(lengths)))
    base = np.uint64(0x9E3779B97F4A7C15)
    top_limits, dup_limits = cfg.max_top_ngram_char_frac, cfg.max_dup_ngram_char_frac
    keys = hashes
    for n in range(2, min(max([*top_limits, *dup_limits, 1]), len(tokens)) + 1):
        # keys[i] identifies tokens[i:i+n]: a polynomial hash, wrapping on overflow.
        keys = keys[:-1] * base + hashes[n - 1 :]
        if n in top_limits:
            count, chars = _top_ngram(keys, cum, n)
            if chars * count / text_length > top_limits[n]:
                yield f"top_{n}gram_char_frac"
        if n in dup_limits:
            frac = _dup_ngram_char_frac(keys, n, lengths, text_length)
            if frac > dup_limits[n]:
                yield f"dup_{n}gram_char_frac"
            # Words covered by repeated (n+1)-grams are covered by repeated n-grams, so the
            # fraction only falls with n: once below every later limit, no later rule fires.
            if all(frac <= limit for m, limit in dup_limits.items() if m > n):
                if all(m <= n for m in top_limits):
                    return


def _top_ngram(keys: np.ndarray, cum: np.ndarray, n: int) -> tuple[int, int]:
    """(count, characters) of the most frequent n-gram; the longest one among ties."""
    sorted_keys = np.sort(keys)
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    runs = np.diff(np.concatenate(([0], bounds, [len(sorted_keys)])))
    count = int(runs.max())
    if count < 2:
        return count, 0
    top_keys = sorted_keys[np.concatenate(([0], bounds))[runs == count]]
    where = np.flatnonzero(np.isin(keys, top_keys))
    return count, int((cum[where + n] - cum[where]).max()) + n - 1


def _dup_ngram_char_frac(keys: np.ndarray, n: int, lengths: np.ndarray, text_length: int) -> float:
    """Share of the text's characters in words covered by an already-seen n-gram."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeat = np.zeros(len(keys), dtype=bool)
    repeat[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]
    starts = np.flatnonzero(repeat)
    if not len(starts):
        return 0.0
    size = len(lengths) + 1
    cover = np.bincount(starts, minlength=size) - np.bincount(starts + n, minlength=size)
    covered = np.cumsum(cover[:-1]) > 0
    # Characters: the covered words plus the single spaces between neighbours in a run.
    chars = lengths[covered].sum() + np.count_nonzero(covered[1:] & covered[:-1])
    return float(chars) / text_length
