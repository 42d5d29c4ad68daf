"""normalize_text: each rule on a small text, and invariants over arbitrary text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.data.normalize import normalize_text

PYTHON = """def f(x):
    if x:  # aligned    comment
        return  {"a":  1}
\treturn None"""


def test_line_endings_become_newlines():
    assert normalize_text("a\r\nb\rc\u2028d\u2029e\x85f") == "a\nb\nc\nd\ne\nf"


def test_control_characters_removed_but_newline_and_tab_kept():
    assert normalize_text("a\x00b\x07c\x1bd\x7fe\x9ff\ufeffg") == "abcdefg"
    assert normalize_text("a\tb\nc") == "a\tb\nc"
    assert normalize_text("x\x0b\x0cy") == "xy"  # vertical tab and form feed are controls


def test_nfc_composes_but_compatibility_forms_stay():
    assert normalize_text("cafe\u0301") == "caf\u00e9"
    assert (
        normalize_text("\ufb01le \uff21") == "\ufb01le \uff21"
    )  # ligature, full-width A: not NFKC


def test_control_between_base_and_mark_is_removed_before_composing():
    assert normalize_text("e\x00\u0301") == "\u00e9"


def test_unicode_spaces_become_spaces_and_runs_collapse():
    assert normalize_text("a\u00a0b\u2009c\u3000d") == "a b c d"
    assert normalize_text("two  spaces,\t\tand   three") == "two spaces, and three"


def test_single_interior_tab_is_kept():
    assert normalize_text("name\tvalue") == "name\tvalue"


def test_indentation_and_alignment_of_indented_lines_are_kept():
    assert normalize_text(PYTHON) == PYTHON
    assert normalize_text("    x  =  1") == "    x  =  1"
    assert normalize_text("x  =  1") == "x = 1"


def test_trailing_whitespace_stripped_per_line():
    assert normalize_text("a  \nb\t\n  c \t") == "a\nb\n  c"


def test_more_than_two_blank_lines_collapse_and_edges_trimmed():
    assert normalize_text("a\n\n\n\n\n\nb") == "a\n\n\nb"
    assert normalize_text("a\n\n\nb") == "a\n\n\nb"  # two blank lines stay
    assert normalize_text("a\n \n\t\n  \n\nb") == "a\n\n\nb"  # whitespace-only lines are blank
    assert normalize_text("\n\n  code\n\n") == "  code"


def test_clean_ascii_prose_is_unchanged():
    text = "It was the best of times.\n\nIt was the worst of times."
    assert normalize_text(text) == text


_CHARS = st.sampled_from(
    list("ab e\t\n\r") + ["\u0301", "\u00a0", "\u2028", "\x00", "\ufeff", "\u3000", "\u00e9", "  "]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_CHARS, max_size=40).map("".join))
def test_idempotent_and_invariants(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert "\r" not in once and "\x00" not in once and "\u00a0" not in once
    assert "\n\n\n\n" not in once
    assert not once.startswith("\n") and not once.endswith("\n")
    assert all(line == line.rstrip(" \t") for line in once.split("\n"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_idempotent_on_any_unicode(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
