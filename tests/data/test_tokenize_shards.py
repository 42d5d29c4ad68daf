"""Tokenization into shards: exact counts, split by document, resume, refusal of bad shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pretrain.data import tokenize as tokenize_mod
from pretrain.data.loader import TokenLoader
from pretrain.data.shards import (
    INDEX_DTYPE,
    MANIFEST_FILE,
    ShardError,
    ShardWriter,
    load_manifest,
    open_split,
)
from pretrain.data.stats import shard_stats
from pretrain.data.tokenize import PROGRESS_FILE, split_of, tokenize_to_shards
from pretrain.tokenizer import Tokenizer
from tests.conftest import write_jsonl

# blake2b-based split of ids "doc-0".."doc-7" at val_fraction 0.5: must never change
PINNED_SPLITS = ["val", "val", "val", "train", "val", "val", "val", "val"]


def _split_streams(directory: Path, split: str) -> tuple[list[np.ndarray], dict]:
    manifest, shards = open_split(directory, split)
    docs = []
    for shard in shards:
        starts = np.concatenate([[0], shard.ends[:-1]])
        docs += [np.asarray(shard.tokens[s:e]) for s, e in zip(starts, shard.ends, strict=True)]
    return docs, manifest


def test_shards_hold_exactly_each_document_tokenized_plus_eos(
    shards_dir: Path, tokenizer: Tokenizer, corpus_docs: list[dict]
):
    for split in ("train", "val"):
        stored, manifest = _split_streams(shards_dir, split)
        expected = [d for d in corpus_docs if split_of(d["id"], 0.1) == split]
        assert len(stored) == len(expected) > 0
        for doc, tokens in zip(expected, stored, strict=True):
            assert tokens.tolist() == tokenizer.encode(doc["text"]) + [tokenizer.special.eos]
        summary = manifest["splits"][split]
        assert summary["num_documents"] == len(expected)
        assert summary["num_tokens"] == sum(len(t) for t in stored)
        assert summary["num_text_bytes"] == sum(len(d["text"].encode()) for d in expected)
        assert summary["sources"]["quickstart.jsonl.gz"]["num_documents"] == len(expected)
    assert manifest["dtype"] == "<u2"
    assert manifest["read_report"]["num_kept"] == len(corpus_docs)
    assert len(manifest["splits"]["train"]["shards"]) > 3  # small shards: several of them


def test_train_and_val_are_disjoint_by_document_and_stable(
    shards_dir: Path, corpus_docs: list[dict]
):
    manifest = load_manifest(shards_dir)
    n_train = manifest["splits"]["train"]["num_documents"]
    n_val = manifest["splits"]["val"]["num_documents"]
    assert n_train + n_val == len(corpus_docs)
    assert 0.05 < n_val / len(corpus_docs) < 0.2
    ids = [d["id"] for d in corpus_docs]
    # pinned values: the split must never change between versions or machines
    assert [split_of(f"doc-{i}", 0.5) for i in range(8)] == PINNED_SPLITS
    shares = [split_of(f"doc-{i}", 0.1) for i in range(10_000)].count("val") / 10_000
    assert 0.09 < shares < 0.11
    assert all(split_of(i, 0.0) == "train" for i in ids)
    assert all(split_of(i, 1.0) == "val" for i in ids)


def test_output_is_the_same_for_any_number_of_workers(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path, shards_dir: Path
):
    tokenize_to_shards(
        tokenizer_dir,
        [str(corpus_path)],
        tmp_path / "w2",
        val_fraction=0.1,
        workers=2,
        shard_max_tokens=50_000,
        batch_bytes=100_000,
    )
    one = load_manifest(shards_dir)["splits"]
    two = load_manifest(tmp_path / "w2")["splits"]
    assert one == two


def test_bad_input_lines_are_counted_in_the_manifest(tmp_path: Path, tokenizer_dir: Path):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        ['{"text": "good one"}', "{oops", '{"body": 1}', '{"text": ""}', b'{"text": "\xff"}'],
    )
    manifest = tokenize_to_shards(
        tokenizer_dir, [str(path), str(tmp_path / "gone")], tmp_path / "o"
    )
    report = manifest["read_report"]
    assert report["num_kept"] == 1 == manifest["splits"]["train"]["num_documents"]
    assert report["errors_by_reason"] == {
        "empty_document": 1,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_path": 1,
        "missing_text_field": 1,
    }


def _shard_bytes(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.glob("*.bin")) + sorted(directory.glob("*.idx"))
    }


def test_interrupted_run_resumes_without_duplicating_or_losing_documents(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path, monkeypatch: pytest.MonkeyPatch
):
    args = dict(val_fraction=0.1, shard_max_tokens=40_000, batch_bytes=50_000)
    reference = tmp_path / "reference"
    tokenize_to_shards(tokenizer_dir, [str(corpus_path)], reference, **args)

    real_finish = ShardWriter.finish
    calls = {"n": 0}

    def failing_finish(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated crash while closing a shard")
        return real_finish(self)

    monkeypatch.setattr(ShardWriter, "finish", failing_finish)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, **args)
    assert not (out / MANIFEST_FILE).exists()  # an unfinished directory never looks valid
    journal = (out / PROGRESS_FILE).read_text().splitlines()
    assert len(journal) == 1 + 5  # plan + five closed shards
    with pytest.raises(ShardError, match="interrupted"):
        load_manifest(out)

    monkeypatch.setattr(ShardWriter, "finish", real_finish)
    encoded = []
    real_encode = tokenize_mod._encode_batch
    monkeypatch.setattr(
        tokenize_mod,
        "_encode_batch",
        lambda texts, d: encoded.append(len(texts)) or real_encode(texts, d),
    )
    manifest = tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, **args)
    assert manifest["splits"] == load_manifest(reference)["splits"]
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert not (out / PROGRESS_FILE).exists()
    assert not list(out.glob("*.tmp"))
    assert sum(encoded) < manifest["read_report"]["num_kept"]  # finished shards were not redone


def test_sigkill_mid_run_then_rerun_finishes_identically(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path
):
    inputs = []
    for i in range(2):  # two inputs: the resumed run crosses from one to the next
        copy = tmp_path / f"copy{i}.jsonl.gz"
        copy.write_bytes(corpus_path.read_bytes())
        inputs.append(str(copy))
    cmd = [sys.executable, "-m", "pretrain.cli", "data", "tokenize",
           "--tokenizer", str(tokenizer_dir), "--input", *inputs,
           "--val-fraction", "0.1", "--shard-max-tokens", "20000"]  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*cmd, "--out", str(reference)], check=True, capture_output=True)

    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    journal = out / PROGRESS_FILE
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "tokenization finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST_FILE).exists()

    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    assert load_manifest(out)["splits"] == load_manifest(reference)["splits"]
    assert _shard_bytes(out) == _shard_bytes(reference)


def test_rerun_with_other_settings_is_refused(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path
):
    out = tmp_path / "o"
    tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, val_fraction=0.1)
    again = tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, val_fraction=0.1)
    assert again == load_manifest(out)
    with pytest.raises(ShardError, match="other settings"):
        tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, val_fraction=0.2)


@pytest.fixture
def copied_shards(tmp_path: Path, shards_dir: Path) -> Path:
    out = tmp_path / "copy"
    out.mkdir()
    for p in shards_dir.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def test_corrupted_shard_is_refused_naming_the_file(copied_shards: Path):
    target = copied_shards / "train-00001.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train-00001\.bin: sha256 does not match"):
        TokenLoader(copied_shards, seq_len=64, micro_batch_size=2)
    stats = shard_stats(copied_shards)
    assert len(stats["problems"]) == 1 and "train-00001.bin" in stats["problems"][0]


def test_truncated_shard_and_index_are_refused_naming_the_file(copied_shards: Path):
    target = copied_shards / "train-00002.bin"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"train-00002\.bin: truncated"):
        TokenLoader(copied_shards, seq_len=64, micro_batch_size=2, checksum=False)
    idx = copied_shards / "val-00000.idx"
    idx.write_bytes(idx.read_bytes()[: -INDEX_DTYPE.itemsize])
    with pytest.raises(ShardError, match=r"val-00000\.idx: truncated"):
        open_split(copied_shards, "val")


def test_wrong_dtype_or_tokenizer_is_refused(copied_shards: Path):
    with pytest.raises(ShardError, match="not the configured tokenizer"):
        open_split(copied_shards, "train", tokenizer_hash="0" * 64)
    manifest = json.loads((copied_shards / MANIFEST_FILE).read_text())
    manifest["dtype"] = "<u4"
    (copied_shards / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="dtype uint32 does not fit"):
        open_split(copied_shards, "train")


def test_resume_after_the_inputs_changed_is_refused(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = tmp_path / "data"
    data.mkdir()
    (data / "b.jsonl.gz").write_bytes(corpus_path.read_bytes())
    real_finish = ShardWriter.finish
    calls = {"n": 0}

    def failing_finish(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_finish(self)

    monkeypatch.setattr(ShardWriter, "finish", failing_finish)
    with pytest.raises(KeyboardInterrupt):
        tokenize_to_shards(tokenizer_dir, [str(data)], tmp_path / "o", shard_max_tokens=40_000)
    monkeypatch.setattr(ShardWriter, "finish", real_finish)
    write_jsonl(data / "a.jsonl", ['{"text": "a new file that sorts first"}'])
    with pytest.raises(ShardError, match="differs in input_files"):
        tokenize_to_shards(tokenizer_dir, [str(data)], tmp_path / "o", shard_max_tokens=40_000)


def test_torn_journal_line_is_dropped_and_the_run_finishes(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path, monkeypatch: pytest.MonkeyPatch
):
    args = dict(shard_max_tokens=40_000)
    reference = tmp_path / "ref"
    tokenize_to_shards(tokenizer_dir, [str(corpus_path)], reference, **args)
    real_finish = ShardWriter.finish
    calls = {"n": 0}

    def failing_finish(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_finish(self)

    monkeypatch.setattr(ShardWriter, "finish", failing_finish)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, **args)
    monkeypatch.setattr(ShardWriter, "finish", real_finish)
    with open(out / PROGRESS_FILE, "a") as f:
        f.write('{"split": "train", "shard": {"na')  # died mid-line
    tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out, **args)
    assert _shard_bytes(out) == _shard_bytes(reference)


def test_inputs_without_any_document_are_refused_and_no_manifest_written(tokenizer_dir, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    cases = [("nomatch*.jsonl", "glob matched no files"), ("nope.jsonl", "no such file"),
             ("empty.jsonl", "holds no documents")]  # fmt: skip
    for k, (name, why) in enumerate(cases):
        with pytest.raises(ValueError, match="no documents could be read") as e:
            tokenize_to_shards(tokenizer_dir, [str(tmp_path / name)], tmp_path / f"out{k}")
        assert f"{name}: {why}" in str(e.value)
        assert not (tmp_path / f"out{k}" / "manifest.json").exists()


def test_a_run_that_finished_no_shard_does_not_block_a_rerun_with_other_inputs(
    tmp_path: Path, tokenizer_dir: Path, corpus_path: Path
):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="nope.jsonl: no such file"):
        tokenize_to_shards(tokenizer_dir, [str(tmp_path / "nope.jsonl")], out)
    assert not (out / PROGRESS_FILE).exists()
    manifest = tokenize_to_shards(tokenizer_dir, [str(corpus_path)], out)
    assert manifest["plan"]["inputs"] == [str(corpus_path)]
    # The journal of an older version, written before any shard: nothing to resume either.
    old = tmp_path / "old"
    old.mkdir()
    (old / PROGRESS_FILE).write_text(json.dumps({"plan": {"inputs": ["nope.jsonl"]}}) + "\n")
    tokenize_to_shards(tokenizer_dir, [str(corpus_path)], old)
    assert _shard_bytes(old) == _shard_bytes(out)
