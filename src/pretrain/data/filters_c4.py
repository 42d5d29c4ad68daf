"""C4 page and line rules (Raffel et al. 2020 §2.2; TFDS ``text/c4_utils.py`` ``clean_page``).

Page rules first, on the whole document:

* **lorem_ipsum**: "lorem ipsum" anywhere, in any case. The paper removes "any page where
  the phrase 'lorem ipsum' appeared"; TFDS only looks at lines its line rules kept, which
  misses it in a line without end punctuation.
* **bad_words**: a listed word flanked by non-letters (TFDS's regex), only when
  ``bad_words`` is given: C4 uses the LDNOOBW "en" list, which is not bundled (nothing here
  touches the network). TFDS checks kept lines; this checks the whole text.
* **too_few_paragraphs**: mC4's line-length rule (Xue et al. 2021; datatrove
  ``C4ParagraphFilter``, after TFDS ``c4_utils.paragraph_filter``): fewer than
  ``min_paragraphs`` (3) logical lines of at least ``min_paragraph_chars`` (200) characters.
  It catches web boilerplate (cookie and JavaScript banners, navigation), whose few
  punctuated lines can pass the sentence count: such pages are short lines, no paragraphs.

Then TFDS's line loop, on each stripped *logical* line (hard-wrapped text joined back, see
:func:`~pretrain.data.text_view.unwrap_lines`), in TFDS order:

1. drop it if a word is longer than ``max_word_length`` (1000) characters;
2. remove Wikipedia citation marks ``[1]``, ``[edit]``, ``[citation needed]``;
3. drop it unless it ends in ``. ? ! "`` and does not end in ``...``; closing quotes and
   brackets after the mark count too (``(Applause.)``, ``'Yes.'``), which TFDS misses;
4. drop it if it has fewer than ``min_words_per_line`` (5) words;
5. drop it if it contains "javascript";
6. **curly_bracket**: remove the page if the line contains ``{``;
7. drop it if it contains a policy phrase ("terms of use", "cookie policy", ...);

and **too_few_sentences** removes the page when the kept lines hold fewer than
``min_sentences`` (3) sentences. TFDS counts sentences with nltk punkt; here a sentence ends
at ``.``, ``!`` or ``?`` (optionally followed by closing quotes or brackets) before
whitespace or the end, unless the word ending there is a common abbreviation (Mr., Dr.,
e.g., a single initial).

Thresholds are TFDS's and the paper's (5 words per line, 3 sentences per page); datatrove's
``C4QualityFilter`` swaps them (3 and 5), see ``reference/data.md`` §2.2.

What this stage does with lines: by default it only *decides* about documents (the page
rules above, computed on the lines C4 keeps) and leaves the text as it is, because the line
rules would cut the headings, list items and code of books and documentation. With
``C4Config.drop_lines`` the kept lines are returned as the new text, as TFDS does, but only
for prose; a technical document's text is never rewritten. Technical documents skip the
paragraph rule, ``{`` and the sentence count (code lines and table rows are short and do not
end in punctuation); lorem ipsum and bad words apply to every document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pretrain.data.content_type import ContentType
from pretrain.data.text_view import TextView

__all__ = ["C4Config", "c4_filter", "count_sentences"]


_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_END_MARKS = (".", "?", "!", '"')
_CLOSERS = "\"')]\u201d\u2019\u00bb"
_SENTENCE_END = re.compile(r"(?<!\S)(\S*?)([.!?]+)[\"'\u201d\u2019)\]]*(?=\s|$)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof gen col capt lt sgt rev hon vs etc e.g i.e cf no vol fig "
    "inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


@dataclass
class C4Config:
    """C4 thresholds and switches (TFDS ``c4_utils.py`` constants)."""

    enabled: bool = True
    drop_lines: bool = False  # rewrite prose to the kept lines (see module docstring)
    max_word_length: int | None = 1000  # _MAX_WORD_LENGTH
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True  # _END_MARKS
    min_words_per_line: int | None = 5  # _MIN_WORDS_PER_LINE (paper: "at least 5 words")
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    policy_substrings: list[str] = field(
        default_factory=lambda: [
            "terms of use",
            "privacy policy",
            "cookie policy",
            "uses cookies",
            "use of cookies",
            "use cookies",
        ]
    )
    bad_words: list[str] = field(default_factory=list)  # LDNOOBW "en" in C4; not bundled
    min_sentences: int | None = 3  # _MIN_NUM_SENTENCES (paper: "fewer than 3 sentences")
    min_paragraphs: int | None = 3  # mC4 paragraph_filter: 3 lines of >= 200 characters
    min_paragraph_chars: int = 200


def count_sentences(text: str, stop_at: int | None = None) -> int:
    """Sentence ends in ``text``: ``.!?`` runs before whitespace, abbreviations excepted.

    Counting stops at ``stop_at`` when given (enough to decide a minimum).
    """
    count = 0
    for match in _SENTENCE_END.finditer(text):
        if match.group(2) == ".":
            word = match.group(1).lower().lstrip("(\"'[\u201c\u2018")
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        count += 1
        if count == stop_at:
            break
    return count


def _ends_sentence(line: str) -> bool:
    """TFDS's end-mark test, also accepting closing quotes and brackets after the mark."""
    if line.endswith(_END_MARKS):
        return not line.endswith("...")
    core = line.rstrip(_CLOSERS)
    return core != line and core.endswith((".", "?", "!")) and not core.endswith("...")


_SUBSTRING_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _substrings_pattern(substrings: list[str]) -> re.Pattern[str]:
    key = tuple(substrings)
    if key not in _SUBSTRING_PATTERNS:
        _SUBSTRING_PATTERNS[key] = re.compile("|".join(re.escape(p.lower()) for p in key))
    return _SUBSTRING_PATTERNS[key]


_BAD_WORD_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _bad_words_pattern(words: list[str]) -> re.Pattern[str]:
    key = tuple(words)
    if key not in _BAD_WORD_PATTERNS:
        alternatives = "|".join(re.escape(w.lower()) for w in key)
        _BAD_WORD_PATTERNS[key] = re.compile(rf"(?:[^a-z]|^)(?:{alternatives})(?:[^a-z]|$)")
    return _BAD_WORD_PATTERNS[key]


def c4_filter(
    view: TextView, ctype: ContentType, cfg: C4Config, kept: list[str] | None = None
) -> Iterator[str]:
    """Names of the C4 page rules ``view`` fails, in order (lazily: take the first).

    When the generator runs to its end without a page rule firing and ``kept`` is a list,
    the lines C4 keeps are appended to it.
    """
    technical = ctype.technical
    text_lower = view.text.lower()
    if cfg.filter_lorem_ipsum and "lorem ipsum" in text_lower:
        # The paper removes "any page where the phrase 'lorem ipsum' appeared"; TFDS looks
        # only at lines that survived rules 1-4, which misses it in unpunctuated lines.
        yield "lorem_ipsum"
    if cfg.bad_words and _bad_words_pattern(cfg.bad_words).search(text_lower):
        yield "bad_words"
    if cfg.min_paragraphs is not None and not technical:
        long_lines = 0
        for line in view.logical_lines:
            if len(line) >= cfg.min_paragraph_chars:
                long_lines += 1
                if long_lines == cfg.min_paragraphs:
                    break
        else:
            yield "too_few_paragraphs"
    if technical:
        return  # no other page rule is for technical text, and its lines are never cut
    curly = cfg.filter_curly_bracket and "{" in view.text
    policy = _substrings_pattern(cfg.policy_substrings) if cfg.filter_policy else None
    need = cfg.min_sentences
    sentences = 0
    lines: list[str] = []
    for line in view.logical_lines:
        if cfg.max_word_length is not None and len(line) > cfg.max_word_length:
            if any(len(word) > cfg.max_word_length for word in line.split()):
                continue
        if cfg.remove_citations and "[" in line:
            line = _CITATION.sub("", line).strip()
        if cfg.filter_no_terminal_punct and not _ends_sentence(line):
            continue
        if cfg.min_words_per_line is not None and len(line.split()) < cfg.min_words_per_line:
            continue
        lower = line.lower()
        if cfg.filter_javascript and "javascript" in lower:
            continue
        if curly and "{" in line:
            yield "curly_bracket"  # TFDS: only in a line the rules above kept
            curly = False
        if policy is not None and policy.search(lower):
            continue
        lines.append(line)
        if need is not None and sentences < need:
            sentences += count_sentences(line, need - sentences)
        elif kept is None and not curly:
            break  # the page is decided and nobody wants the lines
    if need is not None and sentences < need:
        yield "too_few_sentences"
    if kept is not None:
        kept.extend(lines)
