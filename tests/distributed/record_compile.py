"""Worker for tests: train like ``pretrain train`` and record, per rank, what was compiled.

Usage: ``torchrun ... tests/distributed/record_compile.py OUT_DIR --key=value ...``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch._dynamo.utils import counters
from torch.distributed.fsdp import FSDPModule

from pretrain.config import ExperimentConfig, load_config
from pretrain.distributed.launch import exit_process
from pretrain.train.trainer import Trainer


def main() -> None:
    out = Path(sys.argv[1])
    trainer = Trainer(load_config(ExperimentConfig, None, sys.argv[2:]))
    counters.clear()
    graphs_after_each_step: list[int] = []
    queue_step = trainer.queue_step

    def counting_step():
        queued = queue_step()
        graphs_after_each_step.append(counters["stats"]["unique_graphs"])
        return queued

    trainer.queue_step = counting_step
    trainer.fit()
    blocks = trainer.model.blocks
    facts = {
        "compiled_blocks": [b._compiled_call_impl is not None for b in blocks],
        "fsdp_blocks": [isinstance(b, FSDPModule) for b in blocks],
        "graphs_after_each_step": graphs_after_each_step,
        "graph_breaks": sum(counters["graph_break"].values()),
    }
    (out / f"compile_rank{trainer.dist.rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main()
    exit_process(0)
