"""The filter stage: read -> normalize -> quality filters -> optional PII redaction.

One task per input file. A task writes the kept documents to ``kept/<domain>/part-T`` and the
removed ones, with the rule that removed them, to ``removed/filter/part-T``
(``{"id", "domain", "reason", "text"}``), then its report: the kept part (``kept_part``),
documents read, kept, removed per reason, read errors per reason, and bytes in and out. So
every document of a file is accounted for: ``read = kept + removed`` and the reader's
``errors`` cover what could not be read at all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pretrain.data.jsonl_parts import PartWriter, part_name
from pretrain.data.readers import InputFile, ReadReport, read_file


def filter_task(
    task: int,
    path: str,
    name: str,
    domain: str,
    out_dir: str,
    normalize: bool,
    filter_settings: dict[str, Any] | None,
    pii: bool,
) -> dict[str, Any]:
    """Filter one input file; returns the task's report (see the module docstring)."""
    from pretrain.data.filters import FilterConfig, QualityFilter
    from pretrain.data.normalize import normalize_text

    if pii:
        from pretrain.data.pii import redact_pii

    out = Path(out_dir)
    quality = None if filter_settings is None else QualityFilter(FilterConfig(**filter_settings))
    read = ReadReport()
    removed: Counter[str] = Counter()
    pii_counts: Counter[str] = Counter()
    bytes_in = bytes_out = kept = words = 0
    kept_part = out / "kept" / domain / part_name(task)
    with (
        PartWriter(kept_part) as keep,
        PartWriter(out / "removed" / "filter" / part_name(task)) as drop,
    ):
        for doc in read_file(InputFile(Path(path), name), read):
            text = doc["text"]
            bytes_in += len(text.encode("utf-8"))
            if normalize:
                text = normalize_text(text)
            reason = None if quality is None else quality(text)
            if reason is not None:
                removed[reason] += 1
                drop.write({"id": doc["id"], "domain": domain, "reason": reason, "text": text})
                continue
            if pii:
                text, counts = redact_pii(text)
                pii_counts.update(counts)
            kept += 1
            words += len(text.split())
            bytes_out += len(text.encode("utf-8"))
            keep.write({**doc, "text": text, "domain": domain})
    return {
        "task": task,
        "file": path,
        "domain": domain,
        "kept_part": str(kept_part),
        "documents": read.num_kept,  # read as documents (errors are counted apart)
        "kept": kept,
        "removed": dict(removed),
        "read_errors": dict(read.errors_by_reason()),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "words_out": words,
        "pii_redacted": dict(pii_counts),
    }
