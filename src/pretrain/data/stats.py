"""Counts of a token shard directory, with every shard's checksum verified."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.data.shards import (
    MANIFEST_FILE,
    ShardError,
    load_manifest,
    split_shards,
    verify_shard,
)


def shard_stats(directory: str | os.PathLike, checksum: bool = True) -> dict[str, Any]:
    """Per split totals and per source counts, plus a list of shards that failed verification.

    Returns a JSON-ready dict; ``problems`` is empty when every shard matches its manifest.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    dtype = np.dtype(manifest["dtype"])
    problems: list[str] = []
    splits: dict[str, Any] = {}
    for split, summary in manifest["splits"].items():
        shards = split_shards(manifest, split, str(directory / MANIFEST_FILE))
        for shard in shards:
            try:
                verify_shard(directory, shard, dtype, checksum=checksum)
            except ShardError as e:
                problems.append(str(e))
        tokens, text_bytes = summary["num_tokens"], summary["num_text_bytes"]
        splits[split] = {
            "num_shards": summary["num_shards"],
            "num_documents": summary["num_documents"],
            "num_tokens": tokens,
            "num_text_bytes": text_bytes,
            "bytes_per_token": text_bytes / tokens if tokens else 0.0,
            "sources": summary["sources"],
        }
    read = manifest.get("read_report", {})
    return {
        "directory": str(directory),
        "dtype": dtype.name,
        "tokenizer_hash": manifest["tokenizer"]["hash"],
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "splits": splits,
        "documents_read": read.get("num_kept", 0),
        "documents_rejected": read.get("errors_by_reason", {}),
        "checksums_verified": checksum,
        "problems": problems,
    }
