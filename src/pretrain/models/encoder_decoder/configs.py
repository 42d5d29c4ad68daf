"""Encoder-decoder model shapes: :class:`EncoderDecoderConfig` and the named sizes.

One style: T5 v1.1 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", and the v1.1 checkpoints' changes): pre-norm blocks with
RMSNorm without bias ("T5LayerNorm"), gated-GELU feed-forward, no biases, bucketed relative
position biases (Shaw et al. 2018, "Self-Attention with Relative Position Representations", in
T5's simplified scalar-per-bucket form), no 1/sqrt(d) score scaling (folded into the init),
input embeddings shared by encoder and decoder, and an untied LM head.

Every field can be overridden, so a named size is a starting point, not a cage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pretrain.models.common.config_checks import (
    ATTENTION_BACKENDS,
    check_choices,
    check_positive_ints,
    check_positive_numbers,
)
from pretrain.models.common.sizes import sized_config


@dataclass
class EncoderDecoderConfig:
    """Shape of a T5 v1.1-style encoder-decoder with an untied LM head.

    Attributes:
        vocab_size: rows of the shared input embedding and of the LM head.
        d_model: width of the residual stream.
        d_kv: width of each attention head (T5 does not tie it to ``d_model / n_heads``).
        n_heads: attention heads in every attention layer.
        d_ff: hidden width of the gated-GELU feed-forward (each of its two input matrices).
        n_layers: encoder blocks.
        n_decoder_layers: decoder blocks; None means ``n_layers``.
        relative_attention_num_buckets: buckets of the relative position bias.
        relative_attention_max_distance: distance beyond which all positions share a bucket.
        norm_eps: epsilon of every RMSNorm.
        init_factor: HF ``initializer_factor``; every init std (and norm weight) is scaled by it.
        max_seq_len: longest sequence the trainer accepts. Relative positions set no hard
            limit; this is only the ``train.seq_len`` check.
        pad_id: padding token id; pad tokens in the encoder input are masked out as keys.
        decoder_start_id: first decoder input token; None means ``pad_id`` (as HF T5).
        attention_backend: ``sdpa`` (the position bias and the pad/document mask as one dense
            float bias per stack), ``flex`` (FlexAttention: the mask as a block mask, the
            position bias added by a ``score_mod``; training needs CUDA) or ``auto`` (flex on
            CUDA, sdpa elsewhere). Default sdpa: flex's speed here is not measured yet.
    """

    vocab_size: int
    d_model: int = 256
    d_kv: int = 64
    n_heads: int = 4
    d_ff: int = 640
    n_layers: int = 4
    n_decoder_layers: int | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_eps: float = 1e-6
    init_factor: float = 1.0
    max_seq_len: int = 2048
    pad_id: int = 0
    decoder_start_id: int | None = None
    attention_backend: Literal["sdpa", "flex", "auto"] = "sdpa"

    def __post_init__(self) -> None:
        check_choices(self, {"attention_backend": ATTENTION_BACKENDS})
        if self.n_decoder_layers is None and isinstance(self.n_layers, int):
            self.n_decoder_layers = self.n_layers
        check_positive_ints(
            self, "vocab_size", "d_model", "d_kv", "n_heads", "d_ff", "n_layers",
            "n_decoder_layers", "relative_attention_num_buckets",
            "relative_attention_max_distance", "max_seq_len",
        )  # fmt: skip
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                "relative_attention_num_buckets must be at least 4 (half exact, half "
                f"logarithmic, per direction), got {self.relative_attention_num_buckets}"
            )
        check_positive_numbers(self, "norm_eps", "init_factor")
        if self.decoder_start_id is None and isinstance(self.pad_id, int):
            self.decoder_start_id = self.pad_id
        for name in ("pad_id", "decoder_start_id"):
            value = getattr(self, name)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value < self.vocab_size
            ):
                raise ValueError(
                    f"{name} must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}"
                )

    @property
    def head_dim(self) -> int:
        """Width of one attention head (``d_kv``); the FLOPs accounting reads this name."""
        return self.d_kv

    @property
    def n_total_layers(self) -> int:
        """Encoder plus decoder blocks."""
        return self.n_layers + self.n_decoder_layers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SIZES: dict[str, dict[str, Any]] = {
    # 1,303,936 parameters with vocab 4096 (786,432 of them the embedding and LM head).
    "debug": dict(d_model=96, d_kv=24, n_heads=4, d_ff=256, n_layers=2, max_seq_len=512),
    # 5,115,456 parameters with vocab 4096.
    "tiny": dict(d_model=192, d_kv=32, n_heads=6, d_ff=640, n_layers=3, max_seq_len=1024),
    # google/t5-v1_1-base: 247,577,856 parameters with vocab 32128, the count of HF
    # T5ForConditionalGeneration with an untied LM head (see hf.py on transformers 5).
    "t5-v1_1-base": dict(d_model=768, d_kv=64, n_heads=12, d_ff=2048, n_layers=12),
}

SIZES = tuple(_SIZES)


def encoder_decoder_config(size: str, vocab_size: int, **overrides: Any) -> EncoderDecoderConfig:
    """The named size ``size`` for ``vocab_size`` tokens, with any field overridden.

    Raises:
        ValueError: for an unknown size (listing the valid ones), an unknown field, or an
            invalid value (naming the field).
    """
    return sized_config(
        EncoderDecoderConfig, _SIZES, "encoder_decoder", size, vocab_size, overrides
    )
