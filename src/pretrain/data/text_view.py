"""One document's lines, words and paragraphs, computed once and shared by every filter.

Definitions used by all quality filters (``filters_*.py``):

* **line**: a piece of ``text.split("\\n")``; *non-empty* lines hold a non-space character.
  Blank lines separate paragraphs; they are not counted as lines by the line-ratio rules
  (web extractors such as trafilatura emit no blank lines, so on the data the published
  thresholds were set on, "all lines" and "non-empty lines" are the same thing).
* **paragraph**: a block of text between runs of two or more newlines (Gopher's split,
  ``\\n{2,}``, as in datatrove's ``GopherRepetitionFilter``).
* **token**: a piece of ``text.split()`` (dolma's Gopher tagger and the C4 line rules split
  on whitespace too). A **word** is a token with at least one character that is not
  punctuation (:data:`PUNCTUATION`: ASCII punctuation and the common Unicode quotes, dashes,
  bullets and symbols); tokens made only of it (``-``, ``|``, ``>>>``) are not words
  (datatrove counts "non-symbol words" the same way). A word's length leaves out the
  punctuation at its two ends, so ``"end."`` has length 3, as nltk's ``word_tokenize``
  (used by datatrove) would split it.
* **logical line**: a line of a hard-wrapped text joined back with the lines its wrapper
  broke off (see :func:`unwrap_lines`), so line rules written for one-paragraph-per-line web
  text measure sentences and paragraphs, not the wrap width.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from operator import methodcaller, ne

__all__ = ["TERMINAL_PUNCT", "TextView", "ends_sentence", "unwrap_lines"]

#: Characters that make no word on their own and are left out of word lengths at its ends.
PUNCTUATION = string.punctuation + (
    "\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u2039\u203a\u00ab\u00bb"  # quotes
    "\u2010\u2011\u2012\u2013\u2014\u2015\u2026\u00b7\u2022\u2023\u25e6\u2043"  # dashes, bullets
    "\u00a1\u00bf\u00a7\u00b6\u2020\u2021\u00a9\u00ae\u2122\u00b0\u2032\u2033"  # marks
)
_strip_punctuation = methodcaller("strip", PUNCTUATION)
_ALPHA_TOKEN = re.compile(r"(?<!\S)\S*?[^\W\d_]")

#: Line ends that close a sentence: FineWeb's stop characters (``. ' " ! ?``) and their
#: typographic variants (curly quotes, the ellipsis character, CJK full stops).
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u00bb", "\u2026", "\u3002")

_CLOSERS = "\"')]\u201d\u2019\u00bb"


def ends_sentence(line: str) -> bool:
    """``line`` ends in :data:`TERMINAL_PUNCT`, maybe followed by closing quotes or brackets."""
    return line.endswith(TERMINAL_PUNCT) or line.rstrip(_CLOSERS).endswith(TERMINAL_PUNCT)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(occurrences after the first, their characters), as datatrove's ``find_duplicates``."""
    counts = Counter(items)
    n_dup = chars = 0
    for item, count in counts.items():
        if count > 1:
            n_dup += count - 1
            chars += len(item) * (count - 1)
    return n_dup, chars


#: The widest wrap width taken for hard-wrapping; wider lines are one paragraph each.
MAX_WRAP_WIDTH = 100
#: The narrowest: shorter lines are list items, table rows or verse, not wrapped prose.
MIN_WRAP_WIDTH = 40
_LIST_ITEM = re.compile(r"[-*+\u2022\u2023\u25e6\u2043]\s|\d{1,3}[.)]\s|[a-z][.)]\s")


def unwrap_lines(lines: list[str]) -> list[str]:
    """Non-empty ``lines`` with hard-wrapped sentences joined back into logical lines.

    The wrap width ``W`` is the 90th percentile of the non-empty line lengths. A greedy
    wrapper (``fmt``, ``textwrap``, Project Gutenberg's 70 columns) breaks a line only when
    the next word would not fit, so line ``i`` was broken by the wrapper when
    ``len(line_i) + 1 + len(first word of line_i+1) > W`` and the next line is in the same
    paragraph. Such a break is undone unless line ``i`` already ends a sentence (then the
    split falls between sentences and both halves are whole) or the next line starts a list
    item (``- ``, ``* ``, ``1. ``). When ``W`` is outside
    [:data:`MIN_WRAP_WIDTH`, :data:`MAX_WRAP_WIDTH`] the text is not hard-wrapped prose
    (one paragraph per line, or a list, table or verse) and the lines come back as they are.
    """
    kept = [line.strip() for line in lines]
    lengths = sorted(len(line) for line in kept if line)
    if not lengths:
        return []
    width = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))]
    if not MIN_WRAP_WIDTH <= width <= MAX_WRAP_WIDTH:
        return [line for line in kept if line]
    out: list[str] = []
    current = ""
    for line, following in zip(kept, [*kept[1:], ""], strict=True):
        if not line:
            if current:
                out.append(current)
                current = ""
            continue
        current = f"{current} {line}" if current else line
        if (
            not following
            or ends_sentence(line)
            or len(line) + 1 + len(following.split(None, 1)[0]) <= width
            or _LIST_ITEM.match(following)
        ):
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


class TextView:
    """Lazily computed pieces of one document; each is computed at most once."""

    __slots__ = (
        "text", "unwrap", "_lines", "_nonempty", "_tokens", "_n_words", "_word_chars",
        "_logical", "_paras",
    )  # fmt: skip

    def __init__(self, text: str, unwrap: bool = True) -> None:
        self.text = text
        self.unwrap = unwrap  # False: logical lines are the stripped non-empty lines
        self._lines: list[str] | None = None
        self._nonempty: list[str] | None = None
        self._tokens: list[str] | None = None
        self._n_words: int | None = None
        self._word_chars = 0
        self._logical: list[str] | None = None
        self._paras: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.split("\n")
        return self._lines

    @property
    def nonempty_lines(self) -> list[str]:
        if self._nonempty is None:
            self._nonempty = [line for line in self.lines if line and not line.isspace()]
        return self._nonempty

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:
            self._tokens = self.text.split()
        return self._tokens

    @property
    def n_words(self) -> int:
        """Tokens that are words (hold a character that is not :data:`PUNCTUATION`)."""
        if self._n_words is None:
            lengths = list(map(len, map(_strip_punctuation, self.tokens)))
            self._n_words = len(lengths) - lengths.count(0)
            self._word_chars = sum(lengths)
        return self._n_words

    def mean_word_length(self) -> float:
        """Mean length of the words, punctuation at their ends left out."""
        n_words = self.n_words  # computes _word_chars too
        return self._word_chars / n_words if n_words else 0.0

    def n_alpha_tokens(self) -> int:
        """Tokens holding at least one letter (Unicode category L*)."""
        if self.text.isascii():  # an ASCII string holds a letter iff it has a case
            tokens = self.tokens
            return sum(map(ne, map(str.lower, tokens), map(str.upper, tokens)))
        return len(_ALPHA_TOKEN.findall(self.text))

    @property
    def logical_lines(self) -> list[str]:
        if self._logical is None:
            if self.unwrap:
                self._logical = unwrap_lines(self.lines)
            else:
                self._logical = [line.strip() for line in self.nonempty_lines]
        return self._logical

    @property
    def paragraphs(self) -> list[str]:
        if self._paras is None:
            pieces = self.text.split("\n\n")  # str.split: much faster than re.split
            self._paras = [p.strip("\n") for p in pieces if p.strip("\n")]
        return self._paras
