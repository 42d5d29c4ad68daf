"""Write files so that a reader sees either the old content or the whole new content.

Each writer writes to ``NAME.tmp`` in the same directory, flushes it to disk and renames it
over ``NAME``; ``os.replace`` is atomic on POSIX file systems. A crash leaves at most a
``*.tmp`` file, which no reader in this package ever opens.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave nothing half-written behind
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def refuse_occupied(out: Path, overwrite: bool) -> None:
    """Refuse to write a directory at ``out`` over a file or a directory that holds files,
    unless ``overwrite``: what a user keeps there is never replaced unasked.

    Raises:
        ValueError: naming ``out`` and the ``--overwrite`` flag.
    """
    if overwrite:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a directory; pass --overwrite to replace it")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass --overwrite to replace what it holds")


def fresh_partial_dir(out: Path) -> Path:
    """An empty ``OUT.tmp`` beside ``out`` to write a whole directory into (a crashed
    writer's leftovers removed); :func:`replace_dir` then puts it in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = tmp_path(out)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    return partial


def replace_dir(partial: Path, out: Path) -> None:
    """Put the finished ``partial`` directory at ``out``, replacing what ``out`` held."""
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    partial.rename(out)
    fsync_dir(out.parent)
