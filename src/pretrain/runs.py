"""Open a finished (or running) run directory: its config, tokenizer and a checkpoint's model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.config import ExperimentConfig, load_config
from pretrain.models.spec import model_from_config_dict
from pretrain.tokenizer import Tokenizer
from pretrain.train.checkpoint import CheckpointError, load_checkpoint
from pretrain.train.run_files import MODEL_CONFIG_FILE


@dataclass
class LoadedRun:
    run_dir: Path
    config: ExperimentConfig
    tokenizer: Tokenizer
    model: torch.nn.Module
    step: int
    checkpoint: Path


def load_run(
    run_dir: str | os.PathLike, checkpoint: str = "latest", device: str = "cpu"
) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from its saved config and load ``checkpoint`` into it.

    Args:
        run_dir: a directory written by ``pretrain train``.
        checkpoint: ``latest``, ``best`` or ``step_N``.
        device: where to put the model.
    """
    run_dir = Path(run_dir)
    cfg, tokenizer, model = open_run(run_dir)
    ckpt = load_checkpoint(run_dir / "checkpoints", checkpoint, map_location="cpu")
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the run's model: {e}") from e
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, tokenizer, model, ckpt.step, ckpt.path)


def open_run(run_dir: str | os.PathLike) -> tuple[ExperimentConfig, Tokenizer, torch.nn.Module]:
    """A run's config, tokenizer and model with the exact architecture it trained, its weights
    freshly initialized (no checkpoint read)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: not a run directory (no config.yaml)")
    cfg = load_config(ExperimentConfig, config_path)
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    model_config = run_dir / MODEL_CONFIG_FILE  # the exact architecture the run trained
    if not model_config.exists():
        raise FileNotFoundError(f"{model_config}: missing; the run directory is incomplete")
    arch = json.loads(model_config.read_text())
    if arch.get("attention_backend") == "flex":
        # The same attention; "auto" computes it densely wherever the model runs off CUDA
        # (FlexAttention is only fast compiled there, and trains only there).
        arch["attention_backend"] = "auto"
    model = model_from_config_dict(cfg.model.family, arch)
    return cfg, tokenizer, model
