"""``pretrain quickstart``: the whole path on a bundled public-domain corpus, on this machine.

Steps: train a byte-level BPE tokenizer on the bundled text, tokenize it into train/val
shards, and verify them. Model training, evaluation and sampling join this command when the
causal LM trainer lands; until then it stops after the shards and says so.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from pretrain.data.stats import shard_stats
from pretrain.data.tokenize import tokenize_to_shards
from pretrain.tokenizer import train_tokenizer_from_files

log = logging.getLogger(__name__)

QUICKSTART_VOCAB_SIZE = 4096
QUICKSTART_VAL_FRACTION = 0.05


def bundled_corpus() -> Path:
    """The public-domain corpus shipped in the package (assets/LICENSE-quickstart.md)."""
    return Path(str(resources.files("pretrain") / "assets" / "quickstart.jsonl.gz"))


def run_quickstart(out: str | Path, minutes: float = 5.0, workers: int = 2) -> dict[str, Any]:
    """Run every stage that exists so far; return a summary for the closing table."""
    out = Path(out)
    corpus = bundled_corpus()
    started = time.perf_counter()

    log.info(
        "1/2 training a %d-entry byte-level BPE tokenizer on %s", QUICKSTART_VOCAB_SIZE, corpus.name
    )
    tokenizer, _ = train_tokenizer_from_files([str(corpus)], QUICKSTART_VOCAB_SIZE)
    tokenizer_dir = tokenizer.save(out / "tokenizer")

    log.info("2/2 tokenizing into train/val shards (%.0f%% val)", 100 * QUICKSTART_VAL_FRACTION)
    shards_dir = out / "shards"
    tokenize_to_shards(
        tokenizer_dir,
        [str(corpus)],
        shards_dir,
        val_fraction=QUICKSTART_VAL_FRACTION,
        workers=workers,
        overwrite=True,
    )
    stats = shard_stats(shards_dir)
    if stats["problems"]:
        raise RuntimeError(
            "freshly written shards failed verification: " + "; ".join(stats["problems"])
        )
    return {
        "tokenizer": str(tokenizer_dir),
        "shards": str(shards_dir),
        "stats": stats,
        "seconds": time.perf_counter() - started,
        "minutes_requested": minutes,
        "stopped_before_training": True,
    }
