"""Encoder-only model shapes: :class:`EncoderConfig` and the named sizes.

One style, ``bert``: the architecture of BERT (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding"), which RoBERTa (Liu et al. 2019,
"RoBERTa: A Robustly Optimized BERT Pretraining Approach") keeps unchanged while changing the
training recipe (dynamic masking, no NSP, bigger batches). Post-norm LayerNorm blocks, learned
absolute positions, token-type embeddings, exact (erf) GELU, biases everywhere, and an MLM head
tied to the word embeddings.

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

Style = Literal["bert"]
STYLES = ("bert",)


@dataclass
class EncoderConfig(ShapeMixin):
    """Shape of a BERT-style encoder with a masked-LM head.

    Attributes:
        vocab_size: rows of the word embedding (and columns of the tied MLM output).
        d_model: width of the residual stream (BERT's ``hidden_size``).
        n_layers: transformer blocks.
        n_heads: attention heads; ``d_model / n_heads`` is the head dimension.
        d_ff: MLP hidden width; None means ``4 * d_model``.
        max_seq_len: size of the learned absolute position table.
        norm_eps: epsilon of every LayerNorm (1e-12 in BERT).
        init_std: std of the normal init of every weight matrix and embedding (BERT: 0.02,
            no depth scaling).
        type_vocab_size: rows of the token-type (segment) embedding; pretraining always uses
            type 0, fine-tuning on sentence pairs uses type 1 for the second segment.
        pad_id: token id of padding; its word-embedding row starts at zero and gets no
            gradient through the input (``nn.Embedding(padding_idx=...)``, as in HF
            ``BertEmbeddings``); the tied output projection still trains it.
        style: ``bert`` (the only one).
        attention_backend: ``sdpa`` (dense boolean mask for document masking), ``flex``
            (FlexAttention block mask; CUDA for training, see ``models/common/flex.py``) or
            ``auto`` (flex on CUDA, sdpa elsewhere). Default sdpa: flex's speed here is not
            measured yet (docs/benchmarks.md).
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    max_seq_len: int = 512
    norm_eps: float = 1e-12
    init_std: float = 0.02
    type_vocab_size: int = 2
    pad_id: int | None = None
    style: Style = "bert"
    attention_backend: Literal["sdpa", "flex", "auto"] = "sdpa"

    def __post_init__(self) -> None:
        check_choices(self, {"style": STYLES, "attention_backend": ATTENTION_BACKENDS})
        if self.d_ff is None and isinstance(self.d_model, int):
            self.d_ff = 4 * self.d_model
        check_positive_ints(
            self, "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
            "type_vocab_size",
        )  # fmt: skip
        check_heads(self.d_model, self.n_heads)
        check_positive_numbers(self, "norm_eps", "init_std")
        if self.pad_id is not None and (
            not isinstance(self.pad_id, int)
            or isinstance(self.pad_id, bool)
            or not 0 <= self.pad_id < self.vocab_size
        ):
            raise ValueError(
                f"pad_id must be None or a token id in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_id!r}"
            )


_SIZES: dict[str, dict[str, Any]] = {
    # 1,007,744 parameters with vocab 4096 (about half of them the tied embedding): smoke tests.
    "debug": dict(d_model=128, n_layers=2, n_heads=4, max_seq_len=512),
    # 4,541,184 parameters with vocab 4096; the decoder's "tiny" shape, for side-by-side runs.
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, max_seq_len=1024),
    # BERT-base (Devlin et al. 2019): with vocab 30522 (bert-base-uncased) 109,514,298
    # parameters, the count of HF BertForMaskedLM(BertConfig()) (no pooler, no NSP head).
    "bert-base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=512),
}

SIZES = tuple(_SIZES)


def encoder_config(size: str, vocab_size: int, **overrides: Any) -> EncoderConfig:
    """The named size ``size`` for ``vocab_size`` tokens, with any field overridden.

    Raises:
        ValueError: for an unknown size (listing the valid ones), an unknown field, or an
            invalid value (naming the field).
    """
    return sized_config(EncoderConfig, _SIZES, "encoder", size, vocab_size, overrides)
