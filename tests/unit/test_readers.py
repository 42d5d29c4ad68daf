"""Readers: every format, every bad-input case counted per file and reason, strict mode."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pretrain.data.readers import (
    CORRUPT_FILE,
    EMPTY_DOCUMENT,
    INVALID_UTF8,
    KEPT,
    MALFORMED_JSON,
    MISSING_PATH,
    MISSING_TEXT_FIELD,
    UNSUPPORTED_FORMAT,
    DocumentError,
    ReadReport,
    iter_documents,
)
from tests.conftest import write_jsonl

GOOD = json.dumps({"id": "a", "text": "hello world", "lang": "en"})
NO_ID = json.dumps({"text": "no id here"})
MALFORMED = '{"id": "b", "text": "unterminated'
NO_TEXT = json.dumps({"id": "c", "body": "wrong field"})
NULL_TEXT = json.dumps({"id": "c2", "text": None})
EMPTY = json.dumps({"id": "d", "text": "   \n"})
BAD_UTF8 = b'{"id": "e", "text": "caf\xe9"}'
NOT_OBJECT = json.dumps(["a", "list"])
LONE_SURROGATE = '{"id": "f", "text": "broken emoji \\ud83d here"}'  # valid JSON, not UTF-8


def _messy_lines() -> list[str | bytes]:
    return [GOOD, NO_ID, MALFORMED, "", NO_TEXT, NULL_TEXT, EMPTY, BAD_UTF8, NOT_OBJECT]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_bad_lines_are_counted_per_reason_and_good_ones_kept(tmp_path: Path, suffix: str):
    path = write_jsonl(tmp_path / f"messy{suffix}", _messy_lines())
    report = ReadReport()
    docs = list(iter_documents([path], report))

    assert [d["text"] for d in docs] == ["hello world", "no id here"]
    assert docs[0]["id"] == "a" and docs[0]["lang"] == "en"
    # no id field: derived from the file name and line number, stable across runs
    assert docs[1]["id"] == f"messy{suffix}:2"
    counts = report.counts[str(path)]
    assert counts == {
        KEPT: 2,
        MALFORMED_JSON: 2,
        MISSING_TEXT_FIELD: 2,
        EMPTY_DOCUMENT: 1,
        INVALID_UTF8: 1,
    }
    assert report.first_line[(str(path), INVALID_UTF8)] == 8
    assert report.first_line[(str(path), MALFORMED_JSON)] == 3
    # every non-blank line is accounted for
    assert report.num_kept + report.num_errors == sum(1 for ln in _messy_lines() if ln)


@pytest.mark.parametrize(
    ("line", "line_no", "reason"),
    [
        (MALFORMED, 2, MALFORMED_JSON),
        (NO_TEXT, 2, MISSING_TEXT_FIELD),
        (EMPTY, 2, EMPTY_DOCUMENT),
        (BAD_UTF8, 2, INVALID_UTF8),
        (LONE_SURROGATE, 2, INVALID_UTF8),
    ],
)
def test_strict_mode_raises_naming_file_and_line(tmp_path: Path, line, line_no, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line])
    with pytest.raises(DocumentError) as err:
        list(iter_documents([path], ReadReport(strict=True)))
    assert f"{path}:{line_no}: {reason}" in str(err.value)


def test_missing_path_is_counted_or_raised(tmp_path: Path):
    report = ReadReport()
    assert list(iter_documents([tmp_path / "nope.jsonl", tmp_path / "*.jsonl"], report)) == []
    assert report.errors_by_reason() == {MISSING_PATH: 2}
    with pytest.raises(DocumentError, match="nope.jsonl: missing_path"):
        list(iter_documents([tmp_path / "nope.jsonl"], ReadReport(strict=True)))


def test_text_files_one_document_each_with_bad_ones_counted(tmp_path: Path):
    (tmp_path / "a.txt").write_text("first doc\n")
    (tmp_path / "b.md").write_text("# second\n")
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("line one\nna\xefve\n".encode("latin-1"))
    (tmp_path / "notes.csv").write_text("x,y\n")
    report = ReadReport()
    docs = list(iter_documents([tmp_path], report))
    prefix = tmp_path.name  # files under an input directory are named after it
    assert [(d["id"], d["text"]) for d in docs] == [
        (f"{prefix}/a.txt", "first doc\n"),
        (f"{prefix}/b.md", "# second\n"),
    ]
    reasons = report.errors_by_reason()
    assert reasons == {EMPTY_DOCUMENT: 1, INVALID_UTF8: 1, UNSUPPORTED_FORMAT: 1}
    assert report.first_line[(str(tmp_path / "latin1.txt"), INVALID_UTF8)] == 2


def test_directories_recurse_sorted_and_globs_expand(tmp_path: Path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    write_jsonl(corpus / "sub" / "b.jsonl", [NO_ID])
    write_jsonl(corpus / "a.jsonl.gz", [GOOD])
    (corpus / ".hidden.jsonl").write_text(GOOD + "\n")
    by_dir = list(iter_documents([corpus]))
    assert [d["id"] for d in by_dir] == ["a", "corpus/sub/b.jsonl:1"]
    by_glob = list(iter_documents([str(corpus / "**" / "*.jsonl")]))
    assert [d["id"] for d in by_glob] == ["sub/b.jsonl:1"]
    # ids do not depend on where the corpus directory lives
    (tmp_path / "elsewhere").mkdir()
    moved = corpus.rename(tmp_path / "elsewhere" / "corpus")
    assert [d["id"] for d in iter_documents([moved])] == ["a", "corpus/sub/b.jsonl:1"]


def test_same_file_names_in_two_input_directories_stay_apart(tmp_path: Path):
    for name in ("web", "books"):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "part-0.jsonl", [NO_ID])
    ids = [d["id"] for d in iter_documents([tmp_path / "web", tmp_path / "books"])]
    assert ids == ["web/part-0.jsonl:1", "books/part-0.jsonl:1"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_file_keeps_what_was_read_and_counts_the_rest(
    tmp_path: Path, suffix: str
):
    lines = [json.dumps({"text": f"document number {i} " * 20}) for i in range(2000)]
    path = write_jsonl(tmp_path / f"big{suffix}", lines)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    report = ReadReport()
    docs = list(iter_documents([path], report))
    assert 0 < len(docs) < 2000
    # both notice the missing end of the stream (zstandard's own reader would end quietly)
    assert report.counts[str(path)] == {KEPT: len(docs), CORRUPT_FILE: 1}
    with pytest.raises(DocumentError, match=f"{path}"):
        list(iter_documents([path], ReadReport(strict=True)))


def test_a_byte_order_mark_before_the_first_line_is_dropped(tmp_path: Path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n" + GOOD.encode() + b"\n")
    report = ReadReport()
    assert [d["id"] for d in iter_documents([path], report)] == ["a", "a"]
    assert report.counts[str(path)] == {KEPT: 2}


def test_zstd_frames_are_read_one_after_the_other(tmp_path: Path):
    zstandard = pytest.importorskip("zstandard")
    lines = [json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(3000)]
    compress = zstandard.ZstdCompressor().compress
    frames = [compress("".join(lines[i : i + 1000]).encode()) for i in range(0, 3000, 1000)]
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(b"".join(frames))
    report = ReadReport()
    assert len(list(iter_documents([path], report))) == 3000
    assert report.counts[str(path)] == {KEPT: 3000}
    path.write_bytes(b"".join(frames)[: len(frames[0]) + 10])  # cut early in the second frame
    report = ReadReport()
    assert len(list(iter_documents([path], report))) == 1000
    assert report.counts[str(path)] == {KEPT: 1000, CORRUPT_FILE: 1}


def test_parquet_rows_read_with_problems_counted(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": ["x", None, "z"], "content": ["one", "two", ""]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    report = ReadReport()
    docs = list(iter_documents([path], report, text_field="content"))
    assert [(d["id"], d["text"]) for d in docs] == [("x", "one"), ("t.parquet:2", "two")]
    assert report.counts[str(path)] == {KEPT: 2, EMPTY_DOCUMENT: 1}

    report = ReadReport()
    assert list(iter_documents([path], report)) == []  # no "text" column
    assert report.counts[str(path)] == {MISSING_TEXT_FIELD: 3}


def test_a_corrupt_parquet_file_is_counted_and_named_not_fatal(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(10)]}), good)
    cut, fake = tmp_path / "cut.parquet", tmp_path / "fake.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fake.write_text("not parquet at all")
    report = ReadReport()
    docs = list(iter_documents([cut, fake, good], report))
    assert len(docs) == 10  # the good file after the bad ones is still read
    assert report.counts[str(cut)] == report.counts[str(fake)] == {CORRUPT_FILE: 1}
    with pytest.raises(DocumentError, match=f"{cut}: corrupt_file"):
        list(iter_documents([cut], ReadReport(strict=True)))


def test_custom_text_field_and_gzip_roundtrip(tmp_path: Path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"id": 7, "body": "é ✓ 🙂"}) + "\n")
    docs = list(iter_documents([path], text_field="body"))
    assert docs == [{"id": "7", "text": "é ✓ 🙂"}]
