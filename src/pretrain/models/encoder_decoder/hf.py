"""Conversion between :class:`EncoderDecoderLM` and Hugging Face ``T5ForConditionalGeneration``.

The weights are the same numbers under other names: our ``blocks`` list is HF's
``encoder.block`` followed by ``decoder.block``, our stack-level relative position tables are
HF's tables in the first layer of each stack, and the shared embedding is HF's ``shared``.
Options with no exact counterpart are refused with a ``ValueError`` naming them. Dropout is
dropped on import (our model has none, which is the HF model in eval mode); exports set it to
zero.

transformers 5 caveat: ``T5Config`` reads ``tie_word_embeddings=False`` only to switch off the
``d_model**-0.5`` output rescaling (T5 v1.1) and then forces ``tie_word_embeddings=True``, so a
freshly built ``T5ForConditionalGeneration`` shares its LM head with the input embedding. T5
v1.1 has them untied; :func:`to_hf` gives the HF model an LM head of its own, drops it from the
model's tying map, and sets the config back to ``tie_word_embeddings=False`` so that
``config.json`` says what Google's T5 v1.1 configs say: transformers 4 reads ``true`` as the
original T5 (tied head, rescaled outputs). transformers 5.24 ``from_pretrained`` forces ``true``
again whatever the file says, and keeps the head only because the checkpoint holds both
matrices with different values (it logs a warning saying so); a later ``tie_weights()`` or
``resize_token_embeddings`` there re-ties it, as for any T5 v1.1 checkpoint. :func:`from_hf`
checks the head it is given.

``transformers`` is an optional extra (``pretrain[hf]``) and is imported inside the functions.
Nothing here reads from the network: HF models are built from configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pretrain.models.common.hf_convert import build_from_state, load_into_hf, refuse
from pretrain.models.encoder_decoder.configs import EncoderDecoderConfig
from pretrain.models.encoder_decoder.model import EncoderDecoderLM

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# Eager is HF T5's reference path: scores + position bias + mask, softmax, as our model does.
ATTN_IMPLEMENTATION = "eager"


def hf_config(cfg: EncoderDecoderConfig) -> PretrainedConfig:
    """The ``T5Config`` (gated GELU, untied head, dropout zero) describing ``cfg``'s network."""
    import transformers

    return transformers.T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.n_layers,
        num_decoder_layers=cfg.n_decoder_layers,
        num_heads=cfg.n_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=0.0,
        layer_norm_epsilon=cfg.norm_eps,
        initializer_factor=cfg.init_factor,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,  # T5 v1.1: untied head, no output rescaling
        pad_token_id=cfg.pad_id,
        decoder_start_token_id=cfg.decoder_start_id,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def _table(cfg: EncoderDecoderConfig) -> dict[str, str]:
    """Our parameter name -> HF parameter name."""
    table = {
        "embed.weight": "shared.weight",
        "lm_head.weight": "lm_head.weight",
        "encoder_position_bias.embed.weight": (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ),
        "decoder_position_bias.embed.weight": (
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ),
        "encoder_norm.weight": "encoder.final_layer_norm.weight",
        "decoder_norm.weight": "decoder.final_layer_norm.weight",
    }
    mlp = {"gate": "wi_0", "up": "wi_1", "down": "wo"}

    def sublayers(ours: str, hf: str, layers: list[tuple[str, str, str]]) -> None:
        for idx, (norm, module, hf_module) in enumerate(layers):
            table[f"{ours}{norm}.weight"] = f"{hf}layer.{idx}.layer_norm.weight"
            names = mlp if module == "mlp" else {p: p for p in "qkvo"}
            for mine, theirs in names.items():
                table[f"{ours}{module}.{mine}.weight"] = (
                    f"{hf}layer.{idx}.{hf_module}.{theirs}.weight"
                )

    for i in range(cfg.n_layers):
        sublayers(
            f"blocks.{i}.",
            f"encoder.block.{i}.",
            [("attn_norm", "attn", "SelfAttention"), ("mlp_norm", "mlp", "DenseReluDense")],
        )
    for j in range(cfg.n_decoder_layers):
        sublayers(
            f"blocks.{cfg.n_layers + j}.",
            f"decoder.block.{j}.",
            [
                ("attn_norm", "attn", "SelfAttention"),
                ("cross_norm", "cross_attn", "EncDecAttention"),
                ("mlp_norm", "mlp", "DenseReluDense"),
            ],
        )
    return table


def _untie_lm_head(hf_model: Any) -> None:
    """Give the HF model an LM head of its own and keep ``tie_weights`` from re-tying it."""
    if hf_model.lm_head.weight is hf_model.shared.weight:
        hf_model.lm_head.weight = nn.Parameter(hf_model.shared.weight.detach().clone())
    for attr in ("_tied_weights_keys", "all_tied_weights_keys"):
        keys = getattr(hf_model, attr, None)
        if keys and "lm_head.weight" in keys:
            setattr(hf_model, attr, {k: v for k, v in keys.items() if k != "lm_head.weight"})


def to_hf(model: EncoderDecoderLM) -> PreTrainedModel:
    """A ``T5ForConditionalGeneration`` computing the same logits as ``model``.

    The HF model holds copies of the weights, with the dtype and device of ``model``, has an
    untied LM head, and is returned in eval mode.
    """
    import transformers

    hf_model = transformers.T5ForConditionalGeneration(hf_config(model.cfg))
    _untie_lm_head(hf_model)
    # After construction: built with it, the encoder and decoder embeddings would not be tied
    # to ``shared``; saved with T5Config's forced True, transformers 4 would tie the head.
    hf_model.config.tie_word_embeddings = False
    ours = model.state_dict()
    state = {hf: ours[mine] for mine, hf in _table(model.cfg).items()}
    tied = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # aliases of shared
    return load_into_hf(hf_model, state, model.output_weight, may_be_missing=tied)


def _encoder_decoder_config(hf_model: Any) -> EncoderDecoderConfig:
    c = hf_model.config
    refused = []
    if not getattr(c, "is_gated_act", False) or c.dense_act_fn not in (
        "gelu_new",
        "gelu_pytorch_tanh",
    ):
        refused.append(f"feed_forward_proj={c.feed_forward_proj!r} (only 'gated-gelu', T5 v1.1)")
    if getattr(c, "scale_decoder_outputs", False):
        refused.append("decoder output rescaling by d_model**-0.5 (original T5, tied head)")
    if hf_model.lm_head.weight is hf_model.shared.weight or torch.equal(
        hf_model.lm_head.weight, hf_model.shared.weight
    ):
        refused.append("an LM head tied to the input embedding (T5 v1.1 has its own)")
    refuse(refused, "EncoderDecoderLM")
    return EncoderDecoderConfig(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.d_kv,
        n_heads=c.num_heads,
        d_ff=c.d_ff,
        n_layers=c.num_layers,
        n_decoder_layers=c.num_decoder_layers,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        norm_eps=c.layer_norm_epsilon,
        init_factor=c.initializer_factor,
        pad_id=c.pad_token_id,
        decoder_start_id=getattr(c, "decoder_start_token_id", None),
    )


def from_hf(
    hf_model: PreTrainedModel, dtype: torch.dtype | None = torch.float32
) -> EncoderDecoderLM:
    """An :class:`EncoderDecoderLM` with the weights of a T5 v1.1 ``T5ForConditionalGeneration``.

    Args:
        hf_model: the HF model; its weights are copied.
        dtype: parameter dtype of the result. float32 by default (fp32 master weights); None
            keeps the HF dtype.

    Raises:
        ValueError: for another architecture, or options :class:`EncoderDecoderLM` cannot
            express (ReLU feed-forward or output rescaling of the original T5, a tied head).
    """
    import transformers

    if not isinstance(hf_model, transformers.T5ForConditionalGeneration):
        raise ValueError(
            f"unsupported model {type(hf_model).__name__}; valid: T5ForConditionalGeneration"
        )
    cfg = _encoder_decoder_config(hf_model)
    hf_state = hf_model.state_dict()
    state = {mine: hf_state[hf].contiguous() for mine, hf in _table(cfg).items()}
    param = hf_model.get_input_embeddings().weight
    return build_from_state(EncoderDecoderLM, cfg, state, param, dtype)
