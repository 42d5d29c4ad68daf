"""Normalize raw document text before filtering and deduplication.

``normalize_text`` is pure and idempotent (``f(f(x)) == f(x)``). In order:

1. Line endings: ``\\r\\n``, lone ``\\r`` and the Unicode line breaks NEL (U+0085), LINE
   SEPARATOR (U+2028) and PARAGRAPH SEPARATOR (U+2029) become ``\\n`` (the breaks that
   ``str.splitlines`` knows, less the vertical tab and form feed, which are controls).
2. Control characters (Unicode category Cc: C0, DEL, C1) are removed except ``\\n`` and
   ``\\t``; so is the byte-order mark U+FEFF, an invisible artefact of file concatenation.
   This runs before NFC because removing a control between a base letter and a combining
   mark can create a new composable pair.
3. Unicode NFC (canonical composition: ``e`` + U+0301 becomes ``é``), so the same visible
   text has one code-point sequence for dedup and the tokenizer. Compatibility forms
   (NFKC: ligatures, full-width letters) are left alone: they change meaning in code and math.
4. Horizontal space, per line:
   * Unicode space separators (no-break, en/em, thin, ideographic, ...) become ``' '``;
   * trailing spaces and tabs are stripped;
   * leading indentation is kept verbatim: it is syntax in Python, Markdown and reST code
     blocks and YAML;
   * inside a line, runs of two or more spaces/tabs become one space **only on lines that
     start at column 0**. An indented line is code or a literal block, where interior
     alignment (aligned comments, table columns) carries meaning, so it is left alone. A
     single interior tab is not a run and stays (TSV fields keep their separator).
5. More than two consecutive blank lines become two; blank lines at the start and end of
   the document are dropped.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text"]

_LINE_BREAKS = re.compile(r"\r\n?|[\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]")
# Zs (space separators) other than U+0020; U+200B (zero width space) is Cf and is kept.
_UNICODE_SPACE_CHARS = "\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
_UNICODE_SPACE_CHARS += "\u202f\u205f\u3000"
_UNICODE_SPACES = re.compile(f"[{_UNICODE_SPACE_CHARS}]")
_RUN = re.compile(r"[ \t]{2,}")
_MANY_BLANK_LINES = re.compile(r"\n{4,}")


def _clean_line(line: str) -> str:
    line = line.rstrip(" \t")
    if line[:1] not in ("", " ", "\t") and ("  " in line or "\t" in line):
        line = _RUN.sub(" ", line)
    return line


def normalize_text(text: str) -> str:
    """``text`` with line endings, controls, Unicode form and whitespace normalized.

    See the module docstring for the exact rules; plain ASCII prose with ``\\n`` line ends
    and single spaces comes back unchanged. Each step first checks (with fast ``in`` tests)
    whether it has anything to do.
    """
    ascii = text.isascii()
    if "\r" in text or not ascii and ("\x85" in text or "\u2028" in text or "\u2029" in text):
        text = _LINE_BREAKS.sub("\n", text)
    if _CONTROLS.search(text):
        text = _CONTROLS.sub("", text)
    if not ascii:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if any(c in text for c in _UNICODE_SPACE_CHARS):
            text = _UNICODE_SPACES.sub(" ", text)
    if "  " in text or "\t" in text or " \n" in text or text.endswith(" "):
        text = "\n".join(map(_clean_line, text.split("\n")))
    if "\n\n\n\n" in text:
        text = _MANY_BLANK_LINES.sub("\n\n\n", text)
    return text.strip("\n")
