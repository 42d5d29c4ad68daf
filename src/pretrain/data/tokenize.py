"""Tokenize documents into train/val token shards, in parallel, streaming and resumable.

The parent process reads documents in a fixed order and sends them in batches of about
``batch_bytes`` of text to ``workers`` tokenizer processes, keeping at most two batches per
worker in flight, so memory stays bounded whatever the corpus size. Results come back in
order and the parent appends each document (plus EOS) to the open shard of its split; a shard
is closed after ``shard_max_tokens`` tokens. The output is therefore identical for any number
of workers.

Split: a document goes to ``val`` when ``blake2b(id) / 2**64 < val_fraction``, so the split is
by whole document and is the same on every run (the Megatron and datatrove convention of
splitting by document, keyed by a hash so it needs no global shuffle).

Resume: each closed shard is appended (with the range of input positions it covers) to
``.progress.jsonl``. Rerunning the same command after an interruption keeps those shards,
skips the documents they hold and continues; ``manifest.json`` is written only when every
document is in a shard, so an unfinished directory never looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from pretrain import __version__
from pretrain.atomic import TMP_SUFFIX, atomic_write_json, atomic_write_text
from pretrain.data.mix_stage import REPEAT_OF
from pretrain.data.readers import ReadReport, expand_inputs, no_documents_error, read_file
from pretrain.data.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SPLITS,
    ShardError,
    ShardInfo,
    ShardWriter,
    split_summary,
    token_dtype,
    verify_shard,
)
from pretrain.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PROGRESS_FILE = ".progress.jsonl"
DEFAULT_SHARD_MAX_TOKENS = 100_000_000
DEFAULT_BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class TokenizeSettings:
    """Everything that decides the output; a resumed run must use the same settings."""

    inputs: tuple[str, ...]
    val_fraction: float = 0.0
    text_field: str = "text"
    id_field: str = "id"
    shard_max_tokens: int = DEFAULT_SHARD_MAX_TOKENS

    def plan(self, tokenizer: Tokenizer) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            # What the inputs resolve to now: resuming over changed files would shift the
            # reading positions that tell which documents are already in shards.
            "input_files": _fingerprints(self.inputs),
            "val_fraction": self.val_fraction,
            "text_field": self.text_field,
            "id_field": self.id_field,
            "shard_max_tokens": self.shard_max_tokens,
            "tokenizer_hash": tokenizer.hash,
            "format_version": FORMAT_VERSION,
        }


def _fingerprints(inputs: Sequence[str]) -> list[list[Any]]:
    files = expand_inputs(inputs, ReadReport())
    return [[f.name, f.path.stat().st_size, f.path.stat().st_mtime_ns] for f in files]


def split_key(doc: dict[str, Any]) -> str:
    """What decides a document's split: its id, or for a copy made by the mixture stage the
    id of the document it copies (``repeat_of``), so that all copies share one split."""
    return str(doc.get(REPEAT_OF, doc["id"]))


def split_of(doc_id: str, val_fraction: float) -> str:
    """``"val"`` or ``"train"``, from a hash of the document id (deterministic, by document)."""
    if val_fraction <= 0.0:
        return "train"
    if val_fraction >= 1.0:
        return "val"
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")
    return "val" if h / 2**64 < val_fraction else "train"


# --- worker side -------------------------------------------------------------------------

_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    # One thread per worker: parallelism comes from the processes.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer(HFTokenizer.from_str(tokenizer_json))


def _encode_batch(texts: list[str], dtype_str: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize ``texts``; return all ids (each document followed by EOS) and the lengths."""
    assert _WORKER_TOKENIZER is not None
    tok = _WORKER_TOKENIZER
    encodings = tok.backend.encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e) + 1 for e in encodings), dtype=np.int64, count=len(texts))
    flat = np.empty(int(lengths.sum()), dtype=np.dtype(dtype_str))
    ends = np.cumsum(lengths)
    for e, end, n in zip(encodings, ends, lengths, strict=True):
        flat[end - n : end - 1] = e.ids
    flat[ends - 1] = tok.special.eos
    return flat, lengths


# --- parent side -------------------------------------------------------------------------


@dataclass
class _Item:
    input_pos: int
    source: str
    split: str
    num_text_bytes: int


def _batches(
    settings: TokenizeSettings,
    report: ReadReport,
    resume_from: dict[str, int],
    batch_bytes: int,
) -> Iterator[tuple[list[_Item], list[str]]]:
    """Yield (items, texts) batches in reading order, skipping documents already in shards."""
    items: list[_Item] = []
    texts: list[str] = []
    size = 0
    pos = 0
    for file in expand_inputs(settings.inputs, report):
        for doc in read_file(file, report, settings.text_field, settings.id_field):
            split = split_of(split_key(doc), settings.val_fraction)
            if pos >= resume_from[split]:
                text = doc["text"]
                num_bytes = len(text.encode("utf-8"))
                items.append(_Item(pos, file.name, split, num_bytes))
                texts.append(text)
                size += num_bytes
                if size >= batch_bytes:
                    yield items, texts
                    items, texts, size = [], [], 0
            pos += 1
    if items:
        yield items, texts


class _Progress:
    """The journal of closed shards that makes an interrupted run resumable."""

    def __init__(self, out: Path, plan: dict[str, Any]):
        self.path = out / PROGRESS_FILE
        self.plan = plan
        self.shards: dict[str, list[ShardInfo]] = {s: [] for s in SPLITS}
        if self.path.exists():
            self._load(out, plan)

    def _load(self, out: Path, plan: dict[str, Any]) -> None:
        lines = self.path.read_text().splitlines()
        try:
            old_plan = json.loads(lines[0])["plan"]
        except (IndexError, KeyError, json.JSONDecodeError) as e:
            raise ShardError(f"{self.path}: unreadable progress journal; use --overwrite") from e
        kept = lines[:1]
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # the process died while writing this line; the shard is redone
            self.shards[record["split"]].append(ShardInfo.from_dict(record["shard"]))
            kept.append(line)
        if len(kept) == 1:
            # No shard was finished (a run that failed early, or one by an older version that
            # wrote the journal first): there is nothing to resume, whatever the settings.
            self.path.unlink()
            return
        if old_plan != plan:
            changed = sorted(k for k in plan if plan.get(k) != old_plan.get(k))
            raise ShardError(
                f"{out}: holds an unfinished tokenization with other settings "
                f"(differs in {', '.join(changed)}); rerun with the same settings to finish it, "
                "or pass --overwrite to start over"
            )
        if len(kept) < len(lines):  # drop the torn line so later appends start clean
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def resume_points(self) -> dict[str, int]:
        return {s: (v[-1].end_input if v else 0) for s, v in self.shards.items()}

    def record(self, split: str, info: ShardInfo) -> None:
        self.shards[split].append(info)
        line = json.dumps({"split": split, "shard": info.to_dict()}) + "\n"
        if not self.path.exists():
            # Written with the first shard, not before: a run that fails before finishing
            # one (a missing input) leaves nothing that would refuse a corrected rerun.
            atomic_write_text(self.path, json.dumps({"plan": self.plan}) + "\n" + line)
            return
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class _SplitWriter:
    """Appends documents of one split to numbered shards of at most ``max_tokens`` tokens."""

    def __init__(
        self, out: Path, split: str, dtype: np.dtype, max_tokens: int, progress: _Progress
    ):
        self.out, self.split, self.dtype = out, split, dtype
        self.max_tokens = max_tokens
        self.progress = progress
        self.next_index = len(progress.shards[split])
        self.writer: ShardWriter | None = None

    def add(self, tokens: np.ndarray, item: _Item) -> None:
        if self.writer is None:
            name = f"{self.split}-{self.next_index:05d}"
            self.writer = ShardWriter(self.out, name, self.dtype)
        self.writer.add(tokens, item.num_text_bytes, item.source, item.input_pos)
        if self.writer.num_tokens >= self.max_tokens:
            self.close()

    def close(self) -> None:
        if self.writer is not None and self.writer.num_documents:
            self.progress.record(self.split, self.writer.finish())
            self.next_index += 1
        self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def tokenize_to_shards(
    tokenizer_dir: str | os.PathLike,
    inputs: Sequence[str],
    out: str | os.PathLike,
    val_fraction: float = 0.0,
    workers: int = 1,
    text_field: str = "text",
    id_field: str = "id",
    strict: bool = False,
    shard_max_tokens: int = DEFAULT_SHARD_MAX_TOKENS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize ``inputs`` into shards under ``out`` and return the manifest.

    Rerunning with the same arguments after an interruption finishes the job; rerunning after
    it finished returns the existing manifest.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1], got {val_fraction}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    tokenizer = Tokenizer.load(tokenizer_dir)
    settings = TokenizeSettings(
        tuple(str(i) for i in inputs), val_fraction, text_field, id_field, shard_max_tokens
    )
    plan = settings.plan(tokenizer)
    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    finished = _finished_manifest(out, plan)
    if finished is not None:
        log.info("%s is already complete; nothing to do", out)
        return finished
    for stale in out.glob("*" + TMP_SUFFIX):
        stale.unlink()

    dtype = token_dtype(tokenizer.vocab_size)
    progress = _Progress(out, plan)
    for shards in progress.shards.values():
        for info in shards:
            verify_shard(out, info, dtype)
    resume_from = progress.resume_points()
    if any(resume_from.values()):
        log.info("resuming %s after %s", out, resume_from)

    report = ReadReport(strict=strict)
    writers = {s: _SplitWriter(out, s, dtype, shard_max_tokens, progress) for s in SPLITS}
    batches = _batches(settings, report, resume_from, batch_bytes)
    try:
        for items, (flat, lengths) in _tokenized(batches, tokenizer, workers, dtype):
            offset = 0
            for item, n in zip(items, lengths, strict=True):
                writers[item.split].add(flat[offset : offset + n], item)
                offset += n
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    written = sum(i.num_documents for shards in progress.shards.values() for i in shards)
    if written != report.num_kept:
        raise ShardError(
            f"{out}: {report.num_kept} documents were read but {written} are in shards; "
            "the inputs changed during the run? Rerun with --overwrite"
        )
    if report.num_kept == 0:  # shards of nothing would only fail later, in the loader
        raise no_documents_error(inputs, report)
    manifest = _manifest(plan, tokenizer, dtype, progress, report)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    progress.path.unlink()
    return manifest


def _tokenized(
    batches: Iterator[tuple[list[_Item], list[str]]],
    tokenizer: Tokenizer,
    workers: int,
    dtype: np.dtype,
) -> Iterator[tuple[list[_Item], tuple[np.ndarray, np.ndarray]]]:
    """Tokenize batches on ``workers`` processes; yield results in input order."""
    tokenizer_json = tokenizer.backend.to_str()
    if workers == 1:
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        _init_worker(tokenizer_json)
        try:
            for items, texts in batches:
                yield items, _encode_batch(texts, dtype.str)
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
        return
    pending: deque[tuple[list[_Item], Future]] = deque()
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(tokenizer_json,),
    ) as pool:
        try:
            for items, texts in batches:
                pending.append((items, pool.submit(_encode_batch, texts, dtype.str)))
                while len(pending) >= 2 * workers:
                    done_items, future = pending.popleft()
                    yield done_items, future.result()
            while pending:
                done_items, future = pending.popleft()
                yield done_items, future.result()
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise


def _finished_manifest(out: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    path = out / MANIFEST_FILE
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("plan") != plan:
        raise ShardError(
            f"{out}: already holds finished shards made with other settings; "
            "choose another --out or pass --overwrite"
        )
    return manifest


def _manifest(
    plan: dict[str, Any],
    tokenizer: Tokenizer,
    dtype: np.dtype,
    progress: _Progress,
    report: ReadReport,
) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": f"pretrain {__version__}",
        "dtype": dtype.str,
        "tokenizer": {
            "hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.special.eos,
        },
        "plan": plan,
        "splits": {s: split_summary(progress.shards[s]) for s in SPLITS},
        "read_report": report.to_dict(),
    }
