"""Decoder-only model shapes: :class:`DecoderConfig` and the named sizes.

Two styles share one implementation:

* ``llama`` (Touvron et al. 2023): pre-norm RMSNorm, RoPE, SwiGLU, grouped-query attention,
  no biases.
* ``gpt2`` (Radford et al. 2019): pre-norm LayerNorm with bias, learned absolute positions,
  GELU (tanh) MLP, biases.

Every field can be overridden, so a named size is a starting point, not a cage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pretrain.models.common.config_checks import (
    ATTENTION_BACKENDS,
    ShapeMixin,
    check_choices,
    check_heads,
    check_positive_ints,
    check_positive_numbers,
)
from pretrain.models.common.mlp import swiglu_hidden_dim
from pretrain.models.common.sizes import sized_config

Style = Literal["llama", "gpt2"]
STYLES = ("llama", "gpt2")


@dataclass
class DecoderConfig(ShapeMixin):
    """Shape of a decoder-only language model.

    Attributes:
        vocab_size: rows of the token embedding.
        d_model: width of the residual stream.
        n_layers: transformer blocks.
        n_heads: query heads; ``d_model / n_heads`` is the head dimension.
        n_kv_heads: key/value heads (grouped-query attention); None means ``n_heads``.
        d_ff: MLP hidden width; None derives it: SwiGLU ``8/3 * d`` rounded up to
            ``ffn_multiple_of`` (llama), ``4 * d`` (gpt2).
        style: ``llama`` or ``gpt2`` (see the module docstring).
        max_seq_len: longest sequence: size of the learned position table (gpt2) or of the
            precomputed RoPE table (llama).
        rope_theta: RoPE base (llama style only).
        norm_eps: epsilon of every RMSNorm/LayerNorm.
        qk_norm: RMSNorm on queries and keys per head (OLMo-2, Qwen3).
        tie_embeddings: share the token embedding with the output projection.
        bias: biases in linear layers (and LayerNorm); None means True for gpt2, False for
            llama.
        init_std: std of the normal init; residual output projections get
            ``init_std / sqrt(2 * n_layers)``.
        ffn_multiple_of: rounding of the derived SwiGLU width.
        n_experts: 0 for a dense MLP in every block; ``E > 0`` replaces it by a mixture of
            ``E`` SwiGLU experts of width ``d_ff`` each (Mixtral; llama style only; see
            ``models/common/moe.py``).
        experts_per_token: the ``k`` experts each token is routed to.
        router_aux_loss_coef: weight of the load-balancing loss (Switch Transformer) added
            to the training loss, per label token.
        attention_backend: ``sdpa`` (dense boolean mask for document masking), ``flex``
            (FlexAttention block mask; CUDA for training, see ``models/common/flex.py``) or
            ``auto`` (flex on CUDA, sdpa elsewhere). Default sdpa: flex's speed here is not
            measured yet (docs/benchmarks.md).
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    style: Style = "llama"
    max_seq_len: int = 1024
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    bias: bool | None = None
    init_std: float = 0.02
    ffn_multiple_of: int = 256
    attention_backend: Literal["sdpa", "flex", "auto"] = "sdpa"
    n_experts: int = 0
    experts_per_token: int = 2
    router_aux_loss_coef: float = 0.01

    def __post_init__(self) -> None:
        check_choices(self, {"style": STYLES, "attention_backend": ATTENTION_BACKENDS})
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.bias is None:
            self.bias = self.style == "gpt2"
        check_positive_ints(
            self, "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"
        )
        check_heads(self.d_model, self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.style == "llama" and self.head_dim % 2:
            raise ValueError(
                f"head_dim (d_model / n_heads = {self.head_dim}) must be even for RoPE"
            )
        if self.d_ff is None:
            self.d_ff = (
                swiglu_hidden_dim(self.d_model, self.ffn_multiple_of)
                if self.style == "llama"
                else 4 * self.d_model
            )
        check_positive_ints(self, "d_ff")
        check_positive_numbers(self, "rope_theta", "norm_eps", "init_std")
        if self.n_experts < 0:
            raise ValueError(f"n_experts must be >= 0 (0: dense), got {self.n_experts}")
        if self.n_experts:
            if self.style != "llama":
                raise ValueError(
                    f"n_experts={self.n_experts}: a mixture of experts has SwiGLU experts, so "
                    f"style 'llama', got {self.style!r}"
                )
            if not 1 <= self.experts_per_token <= self.n_experts:
                raise ValueError(
                    f"experts_per_token must be between 1 and n_experts ({self.n_experts}), "
                    f"got {self.experts_per_token}"
                )
            if self.router_aux_loss_coef < 0:
                raise ValueError(
                    f"router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}"
                )


_SIZES: dict[str, dict[str, Any]] = {
    # ~1.05M parameters with vocab 4096 (half of them the tied embedding): smoke tests.
    "debug": dict(d_model=128, n_layers=2, n_heads=4, max_seq_len=512),
    # ~4.5M parameters with vocab 4096: trains in minutes on a laptop CPU.
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, max_seq_len=1024),
    # GPT-2 small (Radford et al. 2019): 124,439,808 parameters with vocab 50257.
    "gpt2-small": dict(
        style="gpt2",
        d_model=768,
        n_layers=12,
        n_heads=12,
        max_seq_len=1024,
        tie_embeddings=True,
        bias=True,
    ),
    # Llama 3.2 1B shape (without its long-context RoPE scaling): 1.24B with vocab 128256.
    "llama-1b": dict(
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        rope_theta=500_000.0,
        max_seq_len=8192,
        tie_embeddings=True,
    ),
}

SIZES = tuple(_SIZES)


def decoder_config(size: str, vocab_size: int, **overrides: Any) -> DecoderConfig:
    """The named size ``size`` for ``vocab_size`` tokens, with any field overridden.

    Raises:
        ValueError: for an unknown size (listing the valid ones) or an unknown field.
    """
    return sized_config(DecoderConfig, _SIZES, "decoder", size, vocab_size, overrides)
