"""Parameter counts and FLOPs of a configured model, built on the meta device (no memory).

Conventions differ on which parameters "count" (reference/scaling.md §8.4): Chinchilla counts
every parameter, embeddings included (``total``); Kaplan et al. (2020, §1.3) exclude "all
vocabulary and positional embeddings" (``non_embedding``); the FLOPs use the parameters that
take part in matmuls (``matmul``: non-embedding matrices plus the output projection, even when
it is tied to the token embedding), as torchtitan and PaLM App. B do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from pretrain.config import ModelConfig
from pretrain.scaling.flops import Attention, flops_per_token


@dataclasses.dataclass
class ModelCounts:
    """Parameter counts and shape of one model; FLOPs per token at ``seq_len``."""

    family: str
    total: int
    non_embedding: int
    matmul: int
    active: int
    """Parameters one token uses: ``total`` but, in a mixture of experts, only ``k`` of the
    ``E`` experts' (Fedus et al. 2022's count of a sparse model's FLOPs)."""
    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    seq_len: int
    attention: str
    flops_per_token: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unique_params(model: nn.Module) -> int:
    """Every parameter once (a tied embedding/output matrix counts once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() already deduplicates


def idle_expert_params(model: nn.Module) -> int:
    """The expert weights a token does not use: ``(E - k) / E`` of each mixture of experts'."""
    from pretrain.models.common.moe import MoE

    idle = 0
    for m in model.modules():
        if isinstance(m, MoE):
            idle += sum(p.numel() for p in m.expert_matrices()) - m.active_matmul_params()
    return idle


def build_meta_model(cfg: ModelConfig, vocab_size: int, seq_len: int) -> nn.Module:
    """The model ``cfg`` describes, with parameters on the meta device (shapes only)."""
    from pretrain.models.spec import build_model

    with torch.device("meta"):
        return build_model(cfg, vocab_size, seq_len)


def count_model(model: nn.Module, seq_len: int, attention: Attention = "palm") -> ModelCounts:
    """Counts of a built model (any device, meta included)."""
    from pretrain.models.spec import matmul_params

    cfg = model.cfg
    layers = getattr(cfg, "n_total_layers", cfg.n_layers)  # encoder + decoder stacks
    matmul = matmul_params(model)
    total = unique_params(model)
    family = type(model).__name__
    return ModelCounts(
        family=family,
        total=total,
        non_embedding=model.num_params(exclude_embeddings=True),
        matmul=matmul,
        active=total - idle_expert_params(model),
        n_layers=layers,
        n_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        d_model=cfg.d_model,
        seq_len=seq_len,
        attention=attention,
        flops_per_token=flops_per_token(
            matmul, layers, cfg.n_heads, cfg.head_dim, seq_len, attention
        ),
    )


def count_config(
    cfg: ModelConfig, vocab_size: int, seq_len: int, attention: Attention = "palm"
) -> ModelCounts:
    """Counts of the model a ``model`` config section describes, without allocating it."""
    counts = count_model(build_meta_model(cfg, vocab_size, seq_len), seq_len, attention)
    counts.family = cfg.family
    return counts
