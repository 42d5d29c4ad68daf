"""Plan a run for a compute budget: compute-optimal N and D by three methods, the predicted
loss, a model shape from our decoder family, batch size, learning rate, and wall time.

* Methods: Chinchilla Approach 3 (unrounded constants), the Epoch AI refit (Besiroglu et al.
  2024), and the 20-tokens-per-parameter rule (see ``chinchilla.py``).
* Shape: a llama-style decoder (SwiGLU, RoPE) whose total parameters, embeddings included as
  Chinchilla counts them, come closest to the target, with width/depth near 128 (GPT-3 175B:
  12288/96; Llama 2 7B: 4096/32) and heads of 64 (< 1024 wide) or 128 dimensions.
* Batch and LR: the OLMo-core model ladder's rules (allenai/OLMo-core
  ``model_ladder/wsds_chinchilla_run_configurator.py``, reference/scaling.md §6.1):
  ``batch = 2048 * 160 * (N / 108M)^(2/3)`` tokens and ``lr = 0.0047 * (N / 108M)^(-1/3) / 2``.
  These are heuristics from one codebase, not laws: sweep LR on the small end of a ladder.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pretrain.config import ModelConfig
from pretrain.scaling.chinchilla import (
    CHINCHILLA,
    EPOCH,
    TOKENS_PER_PARAM,
    complete,
    optimal_by_ratio,
)
from pretrain.scaling.counts import count_config
from pretrain.scaling.flops import training_flops, wall_seconds

ASPECT_RATIO = 128.0  # d_model / n_layers
# Above this, the shape's MLP matrix needs more than 2^63 bytes, which torch cannot describe
# even on the meta device (1e20 builds, 1e21 overflows).
MAX_SHAPE_PARAMS = 1e20


@dataclasses.dataclass
class Shape:
    """A decoder shape as ``model.*`` overrides, with its exact counts."""

    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    total_params: int
    non_embedding_params: int

    def overrides(self) -> list[str]:
        return [
            f"--model.{k}={getattr(self, k)}" for k in ("n_layers", "d_model", "n_heads", "d_ff")
        ]


def _head_dim(d_model: int) -> int:
    return 64 if d_model < 1024 else 128


def suggest_shape(target_params: float, vocab_size: int = 32768, seq_len: int = 2048) -> Shape:
    """The llama-style decoder closest to ``target_params`` total parameters (module docstring).

    Non-embedding parameters are about ``12 L d^2`` (4 d^2 attention, 8 d^2 SwiGLU), so each
    depth L gives one width; among the widths within 10% of the target, the one nearest the
    aspect ratio wins.

    Raises:
        ValueError: for a target above :data:`MAX_SHAPE_PARAMS` (plan without a shape).
    """
    if target_params > MAX_SHAPE_PARAMS:
        raise ValueError(
            f"no model shape for {target_params:.3g} parameters: above {MAX_SHAPE_PARAMS:g} its "
            "matrices are too large for torch to describe; plan without one (--no-shape)"
        )
    candidates = []
    for n_layers in range(2, 129):
        embed = vocab_size * 1.0  # tied embedding: vocab * d
        # 12 L d^2 + vocab d = target  ->  d
        d = (-embed + math.sqrt(embed * embed + 48.0 * n_layers * target_params)) / (
            24.0 * n_layers
        )
        head = _head_dim(int(d))
        d_model = max(head, int(round(d / head)) * head)
        total = 12 * n_layers * d_model**2 + vocab_size * d_model
        candidates.append((abs(math.log(total / target_params)), n_layers, d_model))
    close = [c for c in candidates if c[0] < math.log(1.1)] or sorted(candidates)[:1]
    _, n_layers, d_model = min(
        close, key=lambda c: abs(math.log(c[2] / c[1] / ASPECT_RATIO)) + 4 * c[0]
    )
    cfg = ModelConfig(
        family="decoder",
        size="tiny",
        n_layers=n_layers,
        d_model=d_model,
        n_heads=d_model // _head_dim(d_model),
        max_seq_len=seq_len,
    )
    counts = count_config(cfg, vocab_size, seq_len)
    d_ff = _d_ff(cfg, vocab_size)
    return Shape(n_layers, d_model, cfg.n_heads, d_ff, counts.total, counts.non_embedding)


def _d_ff(cfg: ModelConfig, vocab_size: int) -> int:
    from pretrain.models.decoder.configs import decoder_config

    return decoder_config(cfg.size, vocab_size, **cfg.overrides()).d_ff


def batch_tokens(num_params: float, seq_len: int = 2048) -> int:
    """OLMo-core ladder batch size in tokens, rounded to whole sequences (at least one)."""
    raw = 2048 * 160 * (num_params / 108e6) ** (2.0 / 3.0)
    return max(seq_len, int(round(raw / seq_len)) * seq_len)


def learning_rate(num_params: float) -> float:
    """OLMo-core ladder peak LR: ``0.0047 (N/108M)^(-1/3) / 2``."""
    return 0.0047 * (num_params / 108e6) ** (-1.0 / 3.0) / 2.0


def methods_for(
    flops: float | None = None,
    num_params: float | None = None,
    num_tokens: float | None = None,
    tokens_per_param: float = TOKENS_PER_PARAM,
) -> dict[str, tuple[float, float]]:
    """``(N, D)`` per method from one of a budget, a model size or a token count.

    A model size (or token count) alone gives, per method, the tokens (or size) at which it is
    compute-optimal; two of the three fix the run, the same for every method.

    Raises:
        ValueError: unless one or two of the three are given, or for a value that is not a
            positive finite number (0, inf and nan have no optimum; the arithmetic would divide
            by zero or overflow).
    """
    named = {"compute": flops, "params": num_params, "tokens": num_tokens}
    for name, value in {**named, "tokens_per_param": tokens_per_param}.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value:g}")
    ratio = f"tokens_per_param_{tokens_per_param:g}"
    given = sum(x is not None for x in named.values())
    if given == 2:
        _, n, d = complete(flops, num_params, num_tokens)
        return {"chinchilla": (n, d), "epoch": (n, d), ratio: (n, d)}
    if given != 1:
        raise ValueError("give one or two of compute, params and tokens")
    if flops is not None:
        return {
            "chinchilla": CHINCHILLA.optimal(flops),
            "epoch": EPOCH.optimal(flops),
            ratio: optimal_by_ratio(flops, tokens_per_param),
        }
    if num_params is not None:
        return {
            "chinchilla": (num_params, CHINCHILLA.optimal_for_params(num_params)[1]),
            "epoch": (num_params, EPOCH.optimal_for_params(num_params)[1]),
            ratio: (num_params, tokens_per_param * num_params),
        }
    return {
        "chinchilla": (CHINCHILLA.optimal_for_tokens(num_tokens)[1], num_tokens),
        "epoch": (EPOCH.optimal_for_tokens(num_tokens)[1], num_tokens),
        ratio: (num_tokens / tokens_per_param, num_tokens),
    }


def plan(
    methods: dict[str, tuple[float, float]],
    *,
    gpu_peak: float,
    mfu: float = 0.4,
    num_gpus: int = 1,
    vocab_size: int = 32768,
    seq_len: int = 2048,
    with_shape: bool = True,
) -> dict[str, Any]:
    """Per method: ``params``, ``tokens``, ``compute``, ``tokens_per_param``, ``loss_*`` (both
    laws' predictions), ``shape``, ``batch_tokens``, ``lr``, ``wall_seconds``."""
    out: dict[str, Any] = {}
    for name, (n, d) in methods.items():
        flops = training_flops(n, d)
        seconds = wall_seconds(flops, gpu_peak, mfu, num_gpus)
        row: dict[str, Any] = {
            "params": n,
            "tokens": d,
            "compute": flops,
            "tokens_per_param": d / n,
            "loss_chinchilla": CHINCHILLA.loss(n, d),
            "loss_epoch": EPOCH.loss(n, d),
            "batch_tokens": batch_tokens(n, seq_len),
            "lr": learning_rate(n),
            "wall_seconds": seconds,
            "wall_days": seconds / 86400.0,
        }
        if with_shape:
            row["shape"] = dataclasses.asdict(suggest_shape(n, vocab_size, seq_len))
        out[name] = row
    out.update(gpu_peak_flops=gpu_peak, mfu=mfu, num_gpus=num_gpus)
    return out
