"""The token shard format: ``NAME.bin`` + ``NAME.idx`` files listed in ``manifest.json``.

- ``NAME.bin``: token ids, little-endian, ``uint16`` when the vocabulary has at most 65,536
  entries, else ``uint32``; no header (as nanoGPT's and datatrove's ``.ds`` files). Every
  document ends with the EOS id.
- ``NAME.idx``: little-endian ``uint64`` end offset (in tokens, exclusive) of each document in
  ``NAME.bin`` (datatrove's ``.ds.index`` layout); document ``i`` is ``bin[ends[i-1]:ends[i]]``.
- ``manifest.json``: format version, dtype, tokenizer hash, and per split the list of shards
  with their document, token and UTF-8 text byte counts, counts per source, and the sha256 of
  each file.

Shard files are written under ``*.tmp`` names and renamed when whole; a shard only counts once
the manifest (itself written atomically) lists it with its checksums. Readers refuse a shard
whose size, checksum, dtype or tokenizer hash does not match, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.atomic import fsync_dir, tmp_path

FORMAT_NAME = "pretrain-token-shards"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val")
INDEX_DTYPE = np.dtype("<u8")
_HASH_CHUNK_BYTES = 1 << 24


class ShardError(ValueError):
    """A shard or manifest is missing, truncated, corrupted or of the wrong kind."""


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass
class SourceCounts:
    num_documents: int = 0
    num_tokens: int = 0
    num_text_bytes: int = 0

    def add(self, other: SourceCounts) -> None:
        self.num_documents += other.num_documents
        self.num_tokens += other.num_tokens
        self.num_text_bytes += other.num_text_bytes


@dataclass
class ShardInfo:
    """One shard as recorded in the manifest.

    ``first_input``/``end_input`` give the range of input document positions (in reading order)
    that fed this shard; an interrupted tokenization resumes after the last whole shard.
    """

    name: str
    num_documents: int
    num_tokens: int
    num_text_bytes: int
    sha256_bin: str
    sha256_idx: str
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    first_input: int = 0
    end_input: int = 0

    @property
    def bin_file(self) -> str:
        return self.name + ".bin"

    @property
    def idx_file(self) -> str:
        return self.name + ".idx"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = {k: asdict(v) for k, v in sorted(self.sources.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardInfo:
        d = dict(d)
        d["sources"] = {k: SourceCounts(**v) for k, v in d.get("sources", {}).items()}
        return cls(**d)


class ShardWriter:
    """Streams documents into ``NAME.bin.tmp``/``NAME.idx.tmp``; ``finish()`` renames them."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype):
        self.directory = Path(directory)
        self.name = name
        self.dtype = np.dtype(dtype)
        self._bin_path = self.directory / f"{name}.bin"
        self._idx_path = self.directory / f"{name}.idx"
        self._bin = open(tmp_path(self._bin_path), "wb")  # noqa: SIM115 - closed in finish/abort
        self._sha = hashlib.sha256()
        self._ends: list[int] = []
        self._sources: dict[str, SourceCounts] = {}
        self.num_tokens = 0
        self.num_text_bytes = 0
        self.first_input: int | None = None
        self.end_input = 0

    @property
    def num_documents(self) -> int:
        return len(self._ends)

    def add(self, tokens: np.ndarray, num_text_bytes: int, source: str, input_pos: int) -> None:
        """Append one document (its tokens already end with EOS)."""
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        self._bin.write(data)
        self._sha.update(data)
        self.num_tokens += len(tokens)
        self.num_text_bytes += num_text_bytes
        self._ends.append(self.num_tokens)
        counts = self._sources.setdefault(source, SourceCounts())
        counts.add(SourceCounts(1, len(tokens), num_text_bytes))
        if self.first_input is None:
            self.first_input = input_pos
        self.end_input = input_pos + 1

    def finish(self) -> ShardInfo:
        """Flush both files to disk and rename them into place."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        idx_bytes = np.asarray(self._ends, dtype=INDEX_DTYPE).tobytes()
        with open(tmp_path(self._idx_path), "wb") as f:
            f.write(idx_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path(self._bin_path), self._bin_path)
        os.replace(tmp_path(self._idx_path), self._idx_path)
        fsync_dir(self.directory)
        return ShardInfo(
            name=self.name,
            num_documents=self.num_documents,
            num_tokens=self.num_tokens,
            num_text_bytes=self.num_text_bytes,
            sha256_bin=self._sha.hexdigest(),
            sha256_idx=hashlib.sha256(idx_bytes).hexdigest(),
            sources=self._sources,
            first_input=self.first_input or 0,
            end_input=self.end_input,
        )

    def abort(self) -> None:
        self._bin.close()
        for p in (tmp_path(self._bin_path), tmp_path(self._idx_path)):
            p.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()


def split_summary(shards: list[ShardInfo]) -> dict[str, Any]:
    """Totals and per-source counts of one split."""
    sources: dict[str, SourceCounts] = {}
    for shard in shards:
        for name, counts in shard.sources.items():
            sources.setdefault(name, SourceCounts()).add(counts)
    return {
        "num_shards": len(shards),
        "num_documents": sum(s.num_documents for s in shards),
        "num_tokens": sum(s.num_tokens for s in shards),
        "num_text_bytes": sum(s.num_text_bytes for s in shards),
        "sources": {k: asdict(v) for k, v in sorted(sources.items())},
        "shards": [s.to_dict() for s in shards],
    }


def load_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check ``DIR/manifest.json``."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        hint = ""
        if (Path(directory) / ".progress.jsonl").exists():
            hint = " (a tokenization was interrupted here: rerun the same command to finish it)"
        raise ShardError(f"{path}: no manifest; not a finished token shard directory{hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: manifest is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format version {manifest.get('format_version')}, "
            f"this reader knows {FORMAT_VERSION}"
        )
    return manifest


def split_shards(manifest: dict[str, Any], split: str, where: str) -> list[ShardInfo]:
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ShardError(f"{where}: no split {split!r}; it has {sorted(splits)}")
    return [ShardInfo.from_dict(s) for s in splits[split]["shards"]]


def verify_shard(directory: Path, shard: ShardInfo, dtype: np.dtype, checksum: bool = True) -> None:
    """Raise :class:`ShardError` naming the file if a shard is missing, truncated or corrupted."""
    for file, size, digest in (
        (shard.bin_file, shard.num_tokens * dtype.itemsize, shard.sha256_bin),
        (shard.idx_file, shard.num_documents * INDEX_DTYPE.itemsize, shard.sha256_idx),
    ):
        path = directory / file
        if not path.exists():
            raise ShardError(f"{path}: shard file listed in the manifest is missing")
        actual = path.stat().st_size
        if actual != size:
            raise ShardError(
                f"{path}: truncated or wrong dtype: {actual} bytes, the manifest says {size}"
            )
        if checksum and sha256_file(path) != digest:
            raise ShardError(f"{path}: sha256 does not match the manifest (corrupted)")


@dataclass
class OpenShard:
    """A verified shard, memory-mapped."""

    info: ShardInfo
    tokens: np.ndarray  # (num_tokens,) memmap
    ends: np.ndarray  # (num_documents,) document end offsets


def open_split(
    directory: str | os.PathLike,
    split: str,
    checksum: bool = True,
    tokenizer_hash: str | None = None,
) -> tuple[dict[str, Any], list[OpenShard]]:
    """Verify and memory-map every shard of ``split``.

    Args:
        directory: a directory written by ``pretrain data tokenize``.
        split: ``"train"`` or ``"val"``.
        checksum: also compare sha256 (sizes are always checked).
        tokenizer_hash: when given, refuse shards made with another tokenizer.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    where = str(directory / MANIFEST_FILE)
    if tokenizer_hash is not None and manifest["tokenizer"]["hash"] != tokenizer_hash:
        raise ShardError(
            f"{where}: shards were made with tokenizer {manifest['tokenizer']['hash'][:12]}, "
            f"not the configured tokenizer {tokenizer_hash[:12]}"
        )
    dtype = np.dtype(manifest["dtype"])
    if dtype not in (np.dtype("<u2"), np.dtype("<u4")):
        raise ShardError(f"{where}: unsupported dtype {manifest['dtype']!r}")
    expected = token_dtype(manifest["tokenizer"]["vocab_size"])
    if dtype != expected:
        raise ShardError(
            f"{where}: dtype {dtype.name} does not fit vocabulary size "
            f"{manifest['tokenizer']['vocab_size']} (expected {expected.name})"
        )
    opened = []
    for info in split_shards(manifest, split, where):
        verify_shard(directory, info, dtype, checksum=checksum)
        tokens = np.memmap(directory / info.bin_file, dtype=dtype, mode="r")
        ends = np.fromfile(directory / info.idx_file, dtype=INDEX_DTYPE).astype(np.int64)
        if len(ends) and (ends[-1] != info.num_tokens or np.any(np.diff(ends) <= 0)):
            raise ShardError(f"{directory / info.idx_file}: document offsets are inconsistent")
        opened.append(OpenShard(info=info, tokens=tokens, ends=ends))
    return manifest, opened
