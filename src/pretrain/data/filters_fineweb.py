"""FineWeb's extra quality rules (Penedo et al. 2024, arXiv 2406.17557 §3.6).

The paper removes a document when

* the fraction of lines ending with punctuation is <= 0.12 (``line_punct_ratio``),
* the fraction of characters in duplicated lines is >= 0.1 (``char_dup_ratio``),
* the fraction of lines shorter than 30 characters is >= 0.67 (``short_line_ratio``),

and datatrove's ``FineWebQualityFilter`` adds a fourth: more than 0.3 newlines per word
(``list_ratio``). See ``reference/data.md`` §2.3.

Departures, each for a stated reason:

* ``char_dup_ratio`` is the paper's 0.1, not datatrove's code default 0.01: the reference
  notes the code value has never matched the paper, and 0.01 removes a document for one
  repeated heading.
* Line rules count *logical* lines (:func:`~pretrain.data.text_view.unwrap_lines`): FineWeb
  measured trafilatura output, one paragraph per line. On hard-wrapped books 80-90% of
  physical lines end mid-sentence, so the punctuation rule would remove most of them. Blank
  lines are not lines (trafilatura emits none), and ``list_ratio`` counts logical lines,
  not ``\\n`` characters, per word.
* A line ending in punctuation may close with quotes or brackets after it (``(Applause.)``).
* Duplicated lines are physical non-empty lines, as in datatrove.
* Technical documents skip all four rules: code and tables are short unpunctuated lines by
  nature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pretrain.data.content_type import ContentType
from pretrain.data.text_view import TextView, duplicates, ends_sentence

__all__ = ["FineWebConfig", "fineweb_quality"]


@dataclass
class FineWebConfig:
    """FineWeb thresholds; ``None`` turns a rule off."""

    enabled: bool = True
    # Paper: remove if "fraction of lines ending with punctuation" <= 0.12.
    min_line_punct_ratio: float | None = 0.12
    # Paper: remove if "fraction of lines shorter than 30 characters" >= 0.67.
    max_short_line_ratio: float | None = 0.67
    short_line_length: int = 30
    # Paper: remove if "fraction of characters in duplicated lines" >= 0.1 (code: 0.01).
    max_char_dup_ratio: float | None = 0.1
    # datatrove FineWebQualityFilter(new_line_ratio=0.3): remove if newlines/words > 0.3.
    max_list_ratio: float | None = 0.3


def fineweb_quality(view: TextView, ctype: ContentType, cfg: FineWebConfig) -> Iterator[str]:
    """Names of the FineWeb rules ``view`` fails, in order (lazily: take the first)."""
    if ctype.technical:
        return
    lines = view.logical_lines
    if not lines:
        return
    n_lines = len(lines)
    if cfg.min_line_punct_ratio is not None:
        punct = sum(1 for line in lines if ends_sentence(line))
        if punct / n_lines <= cfg.min_line_punct_ratio:
            yield "line_punct_ratio"
    if cfg.max_short_line_ratio is not None:
        short = sum(1 for line in lines if len(line) <= cfg.short_line_length)
        if short / n_lines >= cfg.max_short_line_ratio:
            yield "short_line_ratio"
    if cfg.max_char_dup_ratio is not None:
        _, dup_chars = duplicates(view.nonempty_lines)
        n_chars = max(1, len(view.text) - view.text.count("\n"))
        if dup_chars and dup_chars / n_chars >= cfg.max_char_dup_ratio:
            yield "char_dup_ratio"
    if cfg.max_list_ratio is not None and view.n_words:
        if (n_lines - 1) / view.n_words > cfg.max_list_ratio:
            yield "list_ratio"
