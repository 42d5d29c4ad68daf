"""Worker for tests: ``pretrain train`` that records which checkpoint files each rank hashed.

Usage: ``torchrun ... tests/distributed/record_hashes.py OUT_DIR [--resume] --key=value ...``
writes ``OUT_DIR/hashed_rank{R}.json``: the checkpoint files rank R read through sha256.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pretrain.config import ExperimentConfig, load_config
from pretrain.distributed.launch import exit_process
from pretrain.train import checkpoint
from pretrain.train.trainer import Trainer


def main() -> None:
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    overrides = [a for a in args if a != "--resume"]
    hashed: list[str] = []
    sha256_file = checkpoint.sha256_file

    def recording(path):
        hashed.append(str(path))
        return sha256_file(path)

    checkpoint.sha256_file = recording
    trainer = Trainer(load_config(ExperimentConfig, None, overrides), resume="--resume" in args)
    (out / f"hashed_rank{trainer.dist.rank}.json").write_text(json.dumps(hashed))
    trainer.fit()


if __name__ == "__main__":
    main()
    exit_process(0)
