"""Worker for tests: train like ``pretrain train`` and record the global sample ids each rank read
(and, for FSDP, how the first weight lies over the ranks; under tensor parallelism, how the
first block's query projection does; under pipeline parallelism, which parts its stage holds).

Usage: ``torchrun ... tests/distributed/record_samples.py OUT_DIR [--resume] --key=value ...``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pretrain.config import ExperimentConfig, load_config
from pretrain.distributed.launch import exit_process
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
    weight = next(trainer.model.parameters())
    if hasattr(weight, "device_mesh"):  # FSDP: how the weights lie over the ranks
        local = weight.to_local()
        layout = {
            "mesh_shape": list(weight.device_mesh.shape),
            "placements": [type(p).__name__ for p in weight.placements],
            "local_rows": local.shape[0],
            "rows": weight.shape[0],
            "local_sum": float(local.double().sum()),
        }
        (out / f"layout_rank{rank}.json").write_text(json.dumps(layout))
    if trainer.pipeline is not None:  # which parts of the model this rank's stage holds
        model = trainer.model
        held = {
            "stages": trainer.pipeline.stages,
            "blocks": [i for i, b in enumerate(model.blocks) if any(True for _ in b.parameters())],
            "parts": [name for name, _ in model.named_children() if name != "blocks"],
        }
        (out / f"stage_rank{rank}.json").write_text(json.dumps(held))
        return
    qkv = trainer.model.blocks[0].attn.qkv
    if hasattr(qkv, "parts"):  # tensor parallel: the first block's query projection
        weight = qkv.parts[0].weight
        local = weight.to_local()
        layout = {
            "mesh_shape": list(weight.device_mesh.shape),
            "local_rows": local.shape[0],
            "rows": weight.shape[0],
            "local_sum": float(local.double().sum()),
        }
        (out / f"tp_layout_rank{rank}.json").write_text(json.dumps(layout))


if __name__ == "__main__":
    main()
    exit_process(0)
