"""XLNet model shapes: :class:`XLNetConfig` and the named sizes.

The architecture of XLNet (Yang et al. 2019, "XLNet: Generalized Autoregressive Pretraining for
Language Understanding"), as HF ``XLNetLMHeadModel`` implements it: Transformer-XL relative
positions (sinusoids of ``i - j`` projected per layer, with the content and position biases
``r_w_bias`` / ``r_r_bias``), post-norm blocks, exact (erf) GELU, no biases in attention, an
output layer tied to the word embedding with a bias of its own. No memory (``mem_len``), no
bidirectional data pipeline (``bi_data``): one window at a time.

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
from pretrain.models.common.sizes import sized_config

POSITION_ENCODINGS = ("txl", "rope")
FLEX_LAYOUTS = ("factorization", "input")


@dataclass
class XLNetConfig(ShapeMixin):
    """Shape of an XLNet with its LM head.

    Attributes:
        vocab_size: rows of the word embedding (and of the tied output).
        d_model: width of the residual stream.
        n_layers: two-stream blocks.
        n_heads: attention heads; ``d_model / n_heads`` is the head dimension.
        d_ff: MLP hidden width (HF ``d_inner``); None means ``4 * d_model``.
        max_seq_len: the longest window trained on. Relative positions have no table, so this
            is only the limit the trainer checks ``train.seq_len`` against.
        norm_eps: epsilon of every LayerNorm (1e-12 in XLNet).
        init_std: std of the normal init of every weight (XLNet: 0.02).
        clamp_len: relative distances are clamped to ``[-clamp_len, clamp_len]``; -1: never.
        position_encoding: ``txl`` (default): Transformer-XL relative positions, as the paper
            and HF ``XLNetLMHeadModel``, so checkpoints export and match HF exactly. ``rope``:
            rotary embeddings of the absolute positions (Su et al. 2021), whose q·k depends on
            ``i - j`` only; no ``(B, H, T, 2T)`` position table per layer, so attention is
            plain (flash or FlexAttention) attention under the permutation mask. Not
            exportable to HF.
        rope_theta: RoPE base (``position_encoding="rope"`` only).
        attention_backend: ``sdpa`` (a dense ``(B, H, M, T)`` float bias per stream),
            ``flex`` (FlexAttention: the permutation mask as a block mask over ranks, the
            position term as a ``score_mod``; training needs CUDA, see ``xlnet/flex.py``) or
            ``auto`` (default): flex on CUDA, so no dense bias is built per layer, and sdpa
            on the CPU, where FlexAttention has no backward.
        flex_layout: under ``flex`` with a permutation, the order the content stream's rows
            are laid out in: ``factorization`` (default) sorts them by their rank in the
            factorization order, so each query's visible keys are a prefix and most blocks
            of the block mask are full or empty; ``input`` keeps the input order (every block
            partial). The results are the same; only the kernels' work differs.
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    max_seq_len: int = 512
    norm_eps: float = 1e-12
    init_std: float = 0.02
    clamp_len: int = -1
    position_encoding: Literal["txl", "rope"] = "txl"
    rope_theta: float = 10000.0
    attention_backend: Literal["sdpa", "flex", "auto"] = "auto"
    flex_layout: Literal["factorization", "input"] = "factorization"

    def __post_init__(self) -> None:
        if self.d_ff is None and isinstance(self.d_model, int):
            self.d_ff = 4 * self.d_model
        check_positive_ints(
            self, "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"
        )
        check_heads(self.d_model, self.n_heads)
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (sin/cos pairs), got {self.d_model}")
        check_positive_numbers(self, "norm_eps", "init_std", "rope_theta")
        check_choices(
            self,
            {
                "position_encoding": POSITION_ENCODINGS,
                "attention_backend": ATTENTION_BACKENDS,
                "flex_layout": FLEX_LAYOUTS,
            },
        )
        if self.position_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"position_encoding=rope needs an even head_dim, got {self.head_dim}")
        if not isinstance(self.clamp_len, int) or isinstance(self.clamp_len, bool):
            raise ValueError(
                f"clamp_len must be an integer (-1: no clamping), got {self.clamp_len!r}"
            )


_SIZES: dict[str, dict[str, Any]] = {
    # Smoke tests on CPU.
    "debug": dict(d_model=128, n_layers=2, n_heads=4, max_seq_len=512),
    # The decoder's and encoder's "tiny" shape, for side-by-side runs.
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, max_seq_len=1024),
    # XLNet-base (Yang et al. 2019; HF xlnet-base-cased): 12 layers, 768 wide, 12 heads.
    "base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=512),
}

SIZES = tuple(_SIZES)


def xlnet_config(size: str, vocab_size: int, **overrides: Any) -> XLNetConfig:
    """The named size ``size`` for ``vocab_size`` tokens, with any field overridden.

    Raises:
        ValueError: for an unknown size (listing the valid ones), an unknown field, or an
            invalid value (naming the field).
    """
    return sized_config(XLNetConfig, _SIZES, "xlnet", size, vocab_size, overrides)
