"""The files a run directory holds beside its checkpoints and metrics (DESIGN.md §5).

``config.yaml`` (the resolved configuration, enough to rerun), ``model_config.json`` (the
exact architecture, also where it came from ``model.init_from``; :func:`pretrain.runs.load_run`
rebuilds the model from it), ``tokenizer/``, and at the end ``plots/loss.png`` and a generated
sample in ``samples.txt``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from pretrain.config import ExperimentConfig, save_config
from pretrain.distributed.parallelize import gathered, is_fsdp
from pretrain.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model_config.json"


def write_run_files(
    run_dir: Path, cfg: ExperimentConfig, model_config: dict, tokenizer: Tokenizer
) -> None:
    """``config.yaml``, ``model_config.json`` and ``tokenizer/`` (rank 0 writes them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg.with_absolute_paths(), run_dir / "config.yaml")
    (run_dir / MODEL_CONFIG_FILE).write_text(json.dumps(model_config, indent=2) + "\n")
    tokenizer.save(run_dir / "tokenizer")


def write_sample(
    run_dir: Path,
    cfg: ExperimentConfig,
    model: nn.Module,
    train_module: nn.Module,
    tokenizer: Tokenizer,
    step: int,
    device: torch.device,
    is_main: bool,
) -> None:
    """Append ``log.sample_tokens`` tokens generated from a new document to ``samples.txt``
    (decoders only). Every rank calls this: FSDP gathers the weights collectively, so there
    every rank samples (the same tokens) and rank 0 writes."""
    from pretrain.generate import generate

    if cfg.log.sample_tokens <= 0 or cfg.model.family != "decoder":
        return
    if cfg.distributed.sequence_parallel:  # one new token a step does not split over ranks
        if is_main:
            log.info("no samples.txt under distributed.sequence_parallel: run pretrain generate")
        return
    if cfg.distributed.pipeline_parallel_degree > 1:  # no rank holds the whole model
        if is_main:
            log.info("no samples.txt under pipeline parallelism: run pretrain generate")
        return
    if not (is_main or is_fsdp(train_module)):
        return
    eos = tokenizer.special.eos
    num_tokens = cfg.log.sample_tokens
    if getattr(model, "pos_embed", None) is not None:  # learned positions end
        num_tokens = min(num_tokens, model.cfg.max_seq_len)
    with gathered(train_module):
        ids = generate(
            model,
            torch.tensor([eos]),  # a new document
            num_tokens,
            temperature=0.8,
            top_k=50,
            eos_id=eos,
            generator=torch.Generator(device=device).manual_seed(cfg.train.seed),
        )
    if not is_main:
        return
    text = tokenizer.decode([i for i in ids[1:].tolist() if i != eos])
    with open(run_dir / "samples.txt", "a") as f:
        f.write(f"--- step {step} ---\n{text}\n")
