"""Exact deduplication by a hash of the normalized text.

Normalization: lower-case (``str.lower``), then every run of whitespace (``str.split``'s
Unicode whitespace, newlines included) becomes one space and leading and trailing whitespace
goes, so copies that differ only in case, indentation or line wrapping are one text. This is
how the dirty/ corpus defines its exact duplicates ("case- and whitespace-normalised",
corpora/README.md), and the spirit of dolma's ``dedupe.documents`` on ``$.text`` and
datatrove's ``ExactDedup`` (reference/data.md §1.3, §3.1), which hash whole texts.

The key is the first 8 bytes of BLAKE2b of the UTF-8 normalized text, as an unsigned 64-bit
int: two different texts share a key with probability about ``n**2 / 2**65`` among ``n``
documents (under 1e-7 for a billion). In a multi-task run the key is one more band of
:mod:`pretrain.data.dedup` (reason ``dedup:exact``); :func:`exact_dedup` is the one-process
streaming form, keeping the first document of each key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from pretrain.data.readers import Document

EXACT_REASON = "dedup:exact"


def normalize_for_exact(text: str) -> str:
    """Lower-cased text with whitespace runs collapsed to one space and the ends stripped."""
    return " ".join(text.lower().split())


def exact_key(text: str, lowered: bool = False) -> int:
    """64-bit BLAKE2b key of :func:`normalize_for_exact` of ``text`` (lower-cased already if
    ``lowered``)."""
    normalized = " ".join(text.split()) if lowered else normalize_for_exact(text)
    normalized = normalized.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(normalized, digest_size=8).digest(), "little")


def exact_dedup(docs: Iterable[Document], removed: list[dict] | None = None) -> Iterator[Document]:
    """Yield each document whose normalized text was not seen before, in input order.

    Every other document is appended to ``removed`` as ``{"id", "reason": "dedup:exact",
    "dup_of"}``, ``dup_of`` naming the first document with the same normalized text. Memory:
    one key and one id per distinct text.
    """
    first: dict[int, str] = {}
    for doc in docs:
        key = exact_key(doc["text"])
        survivor = first.get(key)
        if survivor is None:
            first[key] = doc["id"]
            yield doc
        elif removed is not None:
            removed.append({"id": doc["id"], "reason": EXACT_REASON, "dup_of": survivor})
