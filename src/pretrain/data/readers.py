"""Read raw documents from text, markdown, JSON Lines (plain, gzip, zstd) and Parquet files.

A document is a dict ``{"id": str, "text": str, ...metadata}`` (DESIGN.md §3). Every line or
file that cannot become a document is counted in a :class:`ReadReport` under a named reason
(``invalid_utf8``, ``malformed_json``, ``missing_text_field``, ``empty_document``,
``missing_path``, ``unsupported_format``, and ``corrupt_file`` for a truncated gzip stream)
so that ``documents in = kept + errors`` holds per file. With ``strict=True`` the first such
problem raises :class:`DocumentError` naming the file and line instead.

Ids: a JSON record's ``id`` field is used when present. Otherwise the id is derived from the
file's name and the line (or row) number, ``"books.jsonl.gz:12"``; a file found under an
input directory is named by that directory's own name and its path inside it
(``"web/2024/part-0.jsonl:12"``), so ids do not depend on where the corpus lives. The same
name is the document's source in per-source counts.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

Document = dict[str, Any]

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
# JSON may escape half of a UTF-16 pair alone ("\ud83d"): a str no UTF-8 encoder accepts.
_SURROGATE = re.compile("[\ud800-\udfff]")

KEPT = "kept"
MISSING_PATH = "missing_path"
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
MISSING_TEXT_FIELD = "missing_text_field"
EMPTY_DOCUMENT = "empty_document"
UNSUPPORTED_FORMAT = "unsupported_format"
CORRUPT_FILE = "corrupt_file"
ERROR_REASONS = (
    CORRUPT_FILE,
    MISSING_PATH,
    INVALID_UTF8,
    MALFORMED_JSON,
    MISSING_TEXT_FIELD,
    EMPTY_DOCUMENT,
    UNSUPPORTED_FORMAT,
)


class DocumentError(ValueError):
    """Bad input found while reading in strict mode; the message names file and line."""


@dataclass
class ReadReport:
    """Counts of kept documents and of problems, per file and reason.

    ``first_line[(file, reason)]`` keeps the first line (or row) where each problem was seen,
    so a report can point the user at an example.
    """

    strict: bool = False
    counts: dict[str, Counter] = field(default_factory=dict)
    first_line: dict[tuple[str, str], int] = field(default_factory=dict)
    first_detail: dict[tuple[str, str], str] = field(default_factory=dict)

    def kept(self, file: str, n: int = 1) -> None:
        self.counts.setdefault(file, Counter())[KEPT] += n

    def problem(self, file: str, reason: str, line: int = 0, detail: str = "") -> None:
        """Count one problem; raise :class:`DocumentError` instead in strict mode."""
        where = f"{file}:{line}" if line else file
        if self.strict:
            raise DocumentError(f"{where}: {reason}" + (f": {detail}" if detail else ""))
        self.counts.setdefault(file, Counter())[reason] += 1
        self.first_line.setdefault((file, reason), line)
        self.first_detail.setdefault((file, reason), detail)

    @property
    def num_kept(self) -> int:
        return sum(c[KEPT] for c in self.counts.values())

    @property
    def num_errors(self) -> int:
        return sum(n for c in self.counts.values() for r, n in c.items() if r != KEPT)

    def errors_by_reason(self) -> Counter:
        total: Counter = Counter()
        for c in self.counts.values():
            total.update({r: n for r, n in c.items() if r != KEPT})
        return total

    def merge(self, other: ReadReport) -> None:
        for file, c in other.counts.items():
            self.counts.setdefault(file, Counter()).update(c)
        for key, line in other.first_line.items():
            self.first_line.setdefault(key, line)
        for key, detail in other.first_detail.items():
            self.first_detail.setdefault(key, detail)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: per file and reason counts, plus the first example of each."""
        return {
            "num_kept": self.num_kept,
            "num_errors": self.num_errors,
            "errors_by_reason": dict(sorted(self.errors_by_reason().items())),
            "files": {f: dict(sorted(c.items())) for f, c in sorted(self.counts.items())},
            "first_examples": [
                {"file": f, "reason": r, "line": line, "detail": self.first_detail.get((f, r), "")}
                for (f, r), line in sorted(self.first_line.items())
            ],
        }


@dataclass(frozen=True)
class InputFile:
    """A file to read; ``name`` is its path relative to the input it came from (for ids)."""

    path: Path
    name: str


def _has_magic(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    root_parts = []
    for part in parts:
        if _has_magic(part):
            break
        root_parts.append(part)
    return str(Path(*root_parts)) if root_parts else "."


def is_supported(path: Path | str) -> bool:
    return str(path).endswith(SUPPORTED_SUFFIXES)


def expand_inputs(inputs: Sequence[str | os.PathLike], report: ReadReport) -> list[InputFile]:
    """Resolve files, directories (recursively) and glob patterns into a sorted file list.

    A path that does not exist (or a glob that matches nothing) is a ``missing_path`` problem.
    Files of an unknown type are counted as ``unsupported_format``; hidden files inside
    directories are skipped.
    """
    files: list[InputFile] = []
    for raw in inputs:
        spec = os.fspath(raw)
        if _has_magic(spec) and not Path(spec).exists():
            root = _glob_root(spec)
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                report.problem(spec, MISSING_PATH, detail="glob matched no files")
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    files.extend(_expand_dir(path, report, prefix=os.path.relpath(path, root)))
                else:
                    _add_file(files, path, os.path.relpath(path, root), report)
            continue
        path = Path(spec)
        if not path.exists():
            report.problem(spec, MISSING_PATH, detail="no such file or directory")
        elif path.is_dir():
            files.extend(_expand_dir(path, report, prefix=path.resolve().name))
        else:
            _add_file(files, path, path.name, report)
    return files


def no_documents_error(inputs: Sequence[str | os.PathLike], report: ReadReport) -> ValueError:
    """The error refusing ``inputs`` that gave no document, saying path by path why: a path
    that does not exist, a file that holds no document, the problems found in the others.
    ``report`` is the report of reading them."""
    files = [str(f.path) for f in expand_inputs(inputs, ReadReport())]
    why = []
    for file in sorted({*files, *report.counts}):
        counts = report.counts.get(file, Counter())
        if counts[KEPT]:
            continue
        if counts[MISSING_PATH]:
            why.append(f"{file}: {report.first_detail.get((file, MISSING_PATH)) or 'missing'}")
            continue
        problems = []
        for reason, n in sorted(counts.items()):
            if reason != KEPT and n:
                line = report.first_line.get((file, reason))
                problems.append(f"{n} {reason}" + (f" (first at line {line})" if line else ""))
        why.append(f"{file}: {', '.join(problems) if problems else 'holds no documents'}")
    if not why:  # only directories, with no file in them
        why = [f"{os.fspath(i)}: no input files in it" for i in inputs]
    names = [os.fspath(i) for i in inputs]
    return ValueError(f"no documents could be read from {names} ({'; '.join(why)})")


def _expand_dir(root: Path, report: ReadReport, prefix: str) -> list[InputFile]:
    found: list[InputFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            name = os.path.join(prefix, os.path.relpath(path, root)) if prefix else None
            _add_file(found, path, name or os.path.relpath(path, root), report)
    return found


def _add_file(files: list[InputFile], path: Path, name: str, report: ReadReport) -> None:
    if is_supported(path):
        files.append(InputFile(path=path, name=name.replace(os.sep, "/")))
    else:
        report.problem(
            str(path), UNSUPPORTED_FORMAT, detail=f"expected one of {SUPPORTED_SUFFIXES}"
        )


def _open_binary(path: Path) -> IO[bytes]:
    name = str(path)
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        try:
            import zstandard
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{path}: reading .zst needs the 'zstandard' package: pip install 'pretrain[zstd]'"
            ) from e
        raw = open(path, "rb")  # noqa: SIM115 - closed through the wrapper
        return io.BufferedReader(_ZstdFrames(raw, zstandard.ZstdDecompressor()), 1 << 16)
    return open(path, "rb")  # noqa: SIM115


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every frame of a zstd file, one frame after the other.

    A file that ends inside a frame raises ``EOFError``, as ``gzip`` does for a cut member:
    ``zstandard``'s ``stream_reader`` ends quietly at the cut, and the documents after it would
    vanish uncounted.
    """

    _CHUNK = 1 << 20

    def __init__(self, raw: IO[bytes], decompressor: Any) -> None:
        self._raw = raw
        self._decompressor = decompressor
        self._frame: Any = None  # the current frame's decompression object
        self._leftover = b""  # compressed bytes past the end of the last frame
        self._out = b""  # decompressed bytes not yet read
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos == len(self._out):
            if not self._decompress_more():
                return 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decompress_more(self) -> bool:
        data, self._leftover = self._leftover or self._raw.read(self._CHUNK), b""
        if not data:
            if self._frame is not None and not self._frame.eof:
                raise EOFError("the zstd stream ends inside a frame (a truncated file)")
            return False
        if self._frame is None or self._frame.eof:
            self._frame = self._decompressor.decompressobj()
        self._out, self._pos = self._frame.decompress(data), 0
        if self._frame.eof:
            self._leftover = self._frame.unused_data  # the next frame's start
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()


def read_file(
    file: InputFile,
    report: ReadReport,
    text_field: str = "text",
    id_field: str = "id",
) -> Iterator[Document]:
    """Yield the documents of one file, counting each kept document and each problem."""
    name = str(file.path)
    if name.endswith(TEXT_SUFFIXES):
        yield from _read_text_file(file, report)
    elif name.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(file, report, text_field, id_field)
    elif name.endswith(PARQUET_SUFFIXES):
        yield from _read_parquet(file, report, text_field, id_field)
    else:
        report.problem(name, UNSUPPORTED_FORMAT)


def iter_documents(
    inputs: Sequence[str | os.PathLike],
    report: ReadReport | None = None,
    text_field: str = "text",
    id_field: str = "id",
) -> Iterator[Document]:
    """Yield every document of every input, in sorted file order; see :func:`read_file`."""
    report = report if report is not None else ReadReport()
    for file in expand_inputs(inputs, report):
        yield from read_file(file, report, text_field, id_field)


def _read_text_file(file: InputFile, report: ReadReport) -> Iterator[Document]:
    key = str(file.path)
    data = file.path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        report.problem(key, INVALID_UTF8, line=_line_of_offset(data, e.start), detail=str(e))
        return
    if not text.strip():
        report.problem(key, EMPTY_DOCUMENT, line=1)
        return
    report.kept(key)
    yield {"id": file.name, "text": text}


def _line_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_jsonl(
    file: InputFile, report: ReadReport, text_field: str, id_field: str
) -> Iterator[Document]:
    try:
        yield from _read_jsonl_lines(file, report, text_field, id_field)
    except DocumentError:
        raise
    except _stream_errors() as e:
        # A truncated or corrupted gzip/zstd stream: what was read so far is kept and counted,
        # the rest of the file is one problem (its documents cannot be counted).
        report.problem(str(file.path), CORRUPT_FILE, 0, f"{type(e).__name__}: {e}")


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, ValueError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _read_jsonl_lines(
    file: InputFile, report: ReadReport, text_field: str, id_field: str
) -> Iterator[Document]:
    key = str(file.path)
    with _open_binary(file.path) as stream:
        for line_no, raw in enumerate(stream, start=1):
            try:
                # "utf-8-sig" drops the byte-order mark some editors write before line 1
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                report.problem(key, INVALID_UTF8, line=line_no, detail=str(e))
                continue
            if not line.strip():
                continue  # a blank line holds no document
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                report.problem(key, MALFORMED_JSON, line=line_no, detail=str(e))
                continue
            doc = _record_to_document(record, file, line_no, report, text_field, id_field)
            if doc is not None:
                yield doc


def _record_to_document(
    record: Any,
    file: InputFile,
    line_no: int,
    report: ReadReport,
    text_field: str,
    id_field: str,
) -> Document | None:
    key = str(file.path)
    if not isinstance(record, dict):
        report.problem(
            key, MALFORMED_JSON, line_no, f"expected an object, got {type(record).__name__}"
        )
        return None
    text = record.get(text_field)
    if isinstance(text, bytes):  # a binary Parquet column
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            report.problem(key, INVALID_UTF8, line_no, str(e))
            return None
    if not isinstance(text, str):
        what = "missing" if text is None else f"a {type(text).__name__}, not a string"
        report.problem(key, MISSING_TEXT_FIELD, line_no, f"field {text_field!r} is {what}")
        return None
    if surrogate := _SURROGATE.search(text):
        detail = (
            f"field {text_field!r} holds a lone surrogate {ascii(surrogate.group())} at "
            f"character {surrogate.start()} (half of an escaped UTF-16 pair), not UTF-8 text"
        )
        report.problem(key, INVALID_UTF8, line_no, detail)
        return None
    if not text.strip():
        report.problem(key, EMPTY_DOCUMENT, line_no)
        return None
    doc_id = record.get(id_field)
    doc = {k: v for k, v in record.items() if k not in (text_field, id_field)}
    doc["id"] = str(doc_id) if doc_id is not None else f"{file.name}:{line_no}"
    doc["text"] = text
    report.kept(key)
    return doc


def _read_parquet(
    file: InputFile, report: ReadReport, text_field: str, id_field: str
) -> Iterator[Document]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{file.path}: reading .parquet needs pyarrow: pip install 'pretrain[parquet]'"
        ) from e
    key = str(file.path)
    row_no = 0
    try:
        parquet = pq.ParquetFile(file.path)
        columns = parquet.schema_arrow.names
        if text_field not in columns:
            detail = f"no column {text_field!r} in {columns}"
            for row in range(1, parquet.metadata.num_rows + 1):
                report.problem(key, MISSING_TEXT_FIELD, row, detail)
            return
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row_no += 1
                doc = _record_to_document(record, file, row_no, report, text_field, id_field)
                if doc is not None:
                    yield doc
    except (pa.ArrowException, OSError) as e:
        # Not Parquet, truncated, or a corrupted page: the rows read so far are kept and
        # counted, the rest of the file is one problem.
        report.problem(key, CORRUPT_FILE, row_no + 1 if row_no else 0, f"{type(e).__name__}: {e}")
