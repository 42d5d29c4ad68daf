"""Tell technical documents (code, markup, tables) from prose, so prose rules spare them.

The Gopher, C4 and FineWeb heuristics were written for web prose: one paragraph per line,
sentences ending in punctuation, few symbols. Applied to source code and technical
documentation they remove good documents for what makes them technical: ``{`` (C4 drops any
page holding one), lines that end without punctuation (FineWeb), ``#`` comments (Gopher's
hash ratio), repeated structural lines (``=back``, ``.. versionadded::``) and templated
phrasing ("Return the decoded bytes"). About 8% of the clean chunks of ``dirty/`` trip a
simple Gopher rule (corpus README) and datatrove's FineWeb recipe removes 84% of them; every
rule applied to every document by physical lines removes 87% here
(``bench/score_filters.py --blind``).

A document is **technical** when structure that prose does not have is common in it:

* ``layout_frac``: the share of its non-empty lines that are *structural*: indented at least
  two columns deeper than the document's own margin and at most :data:`MAX_CODE_LINE`
  characters long (code blocks, literal blocks, aligned tables, code bodies; a longer
  indented line is an indented paragraph), or a markup command line: a reST directive
  (``.. note::``), a POD command (``=item``), a Markdown code fence, a table row or border.
  At least :data:`MIN_LAYOUT_FRAC`.
* or ``inline_markup``: inline code and link markup per non-empty line, at least
  :data:`MIN_INLINE_PER_LINE`: pairs of backticks (Markdown code spans, reST roles and
  ````literals````) and POD formatting codes (``C<...>``, ``L<...>``).

Not structural: headings (Markdown ``#``, reST underlines, WikiText ``= = T = =``: prose
has them), a margin shared by every line (speeches whose paragraphs are all indented),
bullets (a Gopher rule is about them), HTML tags (markup in extracted web text is
boilerplate, and the C4 rules are for it) and code-like lines at column 0 (inline
JavaScript in web boilerplate looks like that). Prose that is merely hard-wrapped is not
technical; the line rules read it through :func:`pretrain.data.text_view.unwrap_lines`.

The thresholds were set on the *kinds* of documents, not on single ones. On
``dirty/dev``: every junk document has ``layout_frac`` at most 0.02 and no inline markup;
the median Python doc chunk has 0.81 of its lines structural and 0.46 inline codes per
line, the median Perl one 0.31 and 0.34; 97% of the Perl and 99.9% of the Python chunks
are technical, 0.5% of the book chunks (verse, letters) and no WikiText article.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pretrain.data.text_view import TextView

__all__ = [
    "MIN_INLINE_PER_LINE",
    "MIN_LAYOUT_FRAC",
    "ContentType",
    "detect_content_type",
    "is_structural",
]

MIN_LAYOUT_FRAC = 0.2
MIN_INLINE_PER_LINE = 0.1

#: An indented line longer than this is an indented paragraph (speeches, letters), not code.
MAX_CODE_LINE = 160

# Leading whitespace of each non-empty line no longer than MAX_CODE_LINE characters.
_INDENT = re.compile(rf"^([ \t]*)\S(?![^\n]{{{MAX_CODE_LINE}}})", re.MULTILINE)
_MARKUP_LINE = re.compile(
    r"""^[ \t]*(?:
      \.\.[ \t]                # reST directive, comment or target
    | =[a-zA-Z]+\d?\b          # POD command paragraph (=head1, =item, =over)
    | ```|~~~                  # Markdown code fence
    | \|[^\n]*\|[ \t]*$        # table row
    | \+[-=+]+\+[ \t]*$        # grid table border
    )""",
    re.MULTILINE | re.VERBOSE,
)
_MARKUP_STARTS = (".", "=", "`", "~", "|", "+")
_POD_CODE = re.compile(r"[CIBLFSEX]<[^<>\n]+>")


@dataclass(frozen=True)
class ContentType:
    """What kind of text a document is, with the measurements that decided it."""

    layout_frac: float
    inline_markup: float
    margin: int = 0  # the indentation every non-empty line shares (tabs as 4 columns)

    @property
    def technical(self) -> bool:
        return self.layout_frac >= MIN_LAYOUT_FRAC or self.inline_markup >= MIN_INLINE_PER_LINE

    @property
    def name(self) -> str:
        return "technical" if self.technical else "prose"


def detect_content_type(view: TextView) -> ContentType:
    """Measure ``view``'s structure (see the module docstring)."""
    n_lines = len(view.nonempty_lines)
    if not n_lines:
        return ContentType(0.0, 0.0)
    text = view.text
    leads = _INDENT.findall(text)
    indents = [len(x.expandtabs(4)) for x in leads] if "\t" in text else list(map(len, leads))
    margin = min(indents, default=0)
    structural = sum(1 for depth in indents if depth >= margin + 2)
    structural += len(_MARKUP_LINE.findall(text))
    # Backticks delimit inline code in Markdown and reST (``x``, :func:`x`): one per two.
    inline = text.count("`") // 2 + (len(_POD_CODE.findall(text)) if "<" in text else 0)
    return ContentType(min(1.0, structural / n_lines), inline / n_lines, margin)


def is_structural(line: str, margin: int = 0) -> bool:
    """``line`` is indented past ``margin`` by two or more columns, or is a markup command."""
    stripped = line.lstrip(" \t")
    lead = len(line) - len(stripped)
    if stripped and lead and len(line) <= MAX_CODE_LINE + lead:
        if lead >= margin + 2 or len(line[:lead].expandtabs(4)) >= margin + 2:
            return True
    return stripped[:1] in _MARKUP_STARTS and bool(_MARKUP_LINE.match(line))
