"""metrics.jsonl on resume: one line per (step, split) up to the checkpoint, no torn line; a
new run starts the file afresh."""

from __future__ import annotations

import json

from pretrain.train.metrics import METRICS_FILE, MetricsWriter, read_metrics


def _lines(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n" for s in steps)


def test_resume_keeps_lines_up_to_the_checkpoint_and_drops_a_torn_one(tmp_path):
    (tmp_path / METRICS_FILE).write_text(_lines(1, 2, 3, 4, 5) + '{"step": 6, "spl')
    writer = MetricsWriter(tmp_path, resume_step=3, tensorboard=False)
    writer.write({"step": 4, "split": "train", "loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5)
    ]  # fmt: skip


def test_a_new_run_does_not_append_to_an_old_file(tmp_path):
    """``--resume=auto`` with no checkpoint yet starts over where a killed run left lines."""
    (tmp_path / METRICS_FILE).write_text(_lines(1, 2))
    writer = MetricsWriter(tmp_path, resume_step=None, tensorboard=False)
    writer.write({"step": 1, "split": "train", "loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 0.5)]
