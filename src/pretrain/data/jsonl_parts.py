"""Gzipped JSON Lines part files, written whole or not at all.

A :class:`PartWriter` writes ``NAME.tmp`` and renames it to ``NAME`` on :meth:`close` (the
pattern of :mod:`pretrain.atomic`), so an interrupted stage never leaves a part that looks
complete. Level-1 gzip: stage outputs are intermediate files, written once and read once.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretrain.atomic import fsync_dir, tmp_path

PART_SUFFIX = ".jsonl.gz"


def part_name(task: int) -> str:
    return f"part-{task:05d}{PART_SUFFIX}"


class PartWriter:
    """Append records to ``path`` (a ``.jsonl.gz``); visible only after :meth:`close`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tmp_path(self.path)
        self._file = gzip.open(self._tmp, "wt", encoding="utf-8", compresslevel=1)
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_part(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def list_parts(directory: str | os.PathLike) -> list[Path]:
    """The finished parts of a directory (and its sub-directories), in sorted order."""
    return sorted(Path(directory).rglob(f"*{PART_SUFFIX}"))
