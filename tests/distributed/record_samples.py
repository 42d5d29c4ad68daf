"""Worker for tests: train like ``pretrain train`` and record the global sample ids each rank read.

Usage: ``torchrun ... tests/distributed/record_samples.py OUT_DIR [--resume] --key=value ...``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pretrain.config import ExperimentConfig, load_config
from pretrain.distributed.env import exit_process
from pretrain.train.trainer import Trainer


def main() -> None:
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    resume = "--resume" in args
    overrides = [a for a in args if a != "--resume"]
    trainer = Trainer(load_config(ExperimentConfig, None, overrides), resume=resume)
    seen: list[int] = []
    read = trainer.loader.batch_for

    def recording(samples):
        seen.extend(int(s) for s in samples)
        return read(samples)

    trainer.loader.batch_for = recording
    rank = trainer.dist.rank
    trainer.fit()
    (out / f"samples_rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
    exit_process(0)
