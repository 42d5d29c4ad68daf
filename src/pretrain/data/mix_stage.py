"""The mixture stage: per-domain shares, temperature, an epoch cap, realized by repetition.

Shares start from the configured weights (or a domain's natural share of the kept words),
are sharpened or flattened by temperature sampling, ``p_d ∝ share_d ** (1 / T)`` (mT5, Xue
et al. 2021; XLM-R, Conneau et al. 2020), and give each domain a target of ``p_d * total``
words. A domain repeats its documents to reach the target, at most ``max_epochs`` times (the
data-constrained regime of Muennighoff et al. 2023: up to about 4 epochs cost little), so a
small domain that would need more ends below its share; the plan and the realized words per
domain are reported.

Realization is deterministic: a document is written ``floor(e)`` times, plus once more when
a hash of ``(seed, id)`` falls below the fractional part of its domain's epochs ``e``; copies
after the first get ids ending in ``#r1``, ``#r2``... and name the original in ``repeat_of``
(:data:`REPEAT_OF`), so that tokenization puts every copy in its original's split: a copy in
val of a document trained on would measure memorization, not generalization.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from pretrain.data.jsonl_parts import PartWriter, read_part
from pretrain.data.prepare_config import DomainConfig, MixConfig

REPEAT_OF = "repeat_of"
"""Metadata key of a repeated copy: the id of the document it copies."""


def plan_mixture(
    domains: list[DomainConfig], words: dict[str, int], cfg: MixConfig
) -> dict[str, dict[str, Any]]:
    """``{domain: {available_words, share, target_words, epochs, planned_words}}``."""
    total_available = sum(words.values())
    if total_available == 0:
        raise ValueError("the mixture stage received no words: every document was removed")
    base = {
        d.name: d.weight if d.weight is not None else words[d.name] / total_available
        for d in domains
    }
    norm = sum(base.values())
    tempered = {n: (b / norm) ** (1.0 / cfg.temperature) for n, b in base.items()}
    z = sum(tempered.values())
    total = cfg.total_tokens if cfg.total_tokens is not None else total_available
    plan = {}
    for d in domains:
        share = tempered[d.name] / z
        available = words[d.name]
        target = share * total
        epochs = 0.0 if available == 0 else min(target / available, d.max_epochs)
        plan[d.name] = {
            "available_words": available,
            "share": share,
            "target_words": round(target),
            "epochs": epochs,
            "planned_words": round(epochs * available),
            "capped": available == 0 or target / available > d.max_epochs,
        }
    return plan


def copies_of(doc_id: str, epochs: float, seed: int) -> int:
    """How many times the document ``doc_id`` is written for a domain's ``epochs``."""
    whole = math.floor(epochs)
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    return whole + (u < epochs - whole)


def mix_task(
    task: int, part: str, domain: str, out_path: str, epochs: float, seed: int
) -> dict[str, Any]:
    """Write one kept part's documents ``copies_of`` times; returns the task's report."""
    documents = written = words = 0
    with PartWriter(Path(out_path)) as out:
        for doc in read_part(part):
            documents += 1
            n = copies_of(doc["id"], epochs, seed)
            doc_words = len(doc["text"].split())
            for k in range(n):
                copy = {**doc, "id": f"{doc['id']}#r{k}", REPEAT_OF: doc["id"]}
                out.write(doc if k == 0 else copy)
            written += n
            words += n * doc_words
    return {"task": task, "domain": domain, "documents": documents, "written": written,
            "words_out": words}  # fmt: skip
