"""Conversion between :class:`EncoderLM` and Hugging Face ``BertForMaskedLM``.

The weights are the same numbers in a different layout: our fused ``qkv`` rows split into HF's
``query``/``key``/``value``, and HF's MLM decoder is our tied word embedding plus
``output_bias``. ``BertForMaskedLM`` has no pooler and no next-sentence head, and neither do
we. Options with no exact counterpart are refused with a ``ValueError`` naming them, never
approximated. Dropout is the one thing dropped on import: our model has none, which is the HF
model in eval mode; exports set it to zero.

``transformers`` is an optional extra (``pretrain[hf]``) and is imported inside the functions.
Nothing here reads from the network: HF models are built from configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pretrain.models.common.hf_convert import (
    Entry,
    build_from_state,
    from_hf_tensors,
    load_into_hf,
    refuse,
    to_hf_tensors,
)
from pretrain.models.encoder.configs import EncoderConfig
from pretrain.models.encoder.model import EncoderLM

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# SDPA is what our model runs, and it is the HF backend that also takes our boolean
# (B, 1, T, T) document mask unchanged; "eager" matches within fp32 rounding as well.
ATTN_IMPLEMENTATION = "sdpa"


def hf_config(cfg: EncoderConfig) -> PretrainedConfig:
    """The ``BertConfig`` describing the same network as ``cfg`` (with dropout zero).

    Raises:
        ValueError: naming every option of ``cfg`` BERT cannot express.
    """
    import transformers

    refuse([] if cfg.style == "bert" else [f"style={cfg.style!r}"], "BertForMaskedLM")
    return transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        hidden_act="gelu",  # exact erf GELU
        max_position_embeddings=cfg.max_seq_len,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        initializer_range=cfg.init_std,
        # Our model has no dropout; zero keeps a fine-tuned export the same network.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=cfg.pad_id,
        tie_word_embeddings=True,
        is_decoder=False,
        add_cross_attention=False,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


# our name -> [(HF name, rows)]; several entries are row blocks of one fused matrix of ours
# (rows None: the whole tensor).
Table = dict[str, list[tuple[str, int | None]]]


def _table(cfg: EncoderConfig) -> Table:
    d = cfg.d_model
    emb, pred = "bert.embeddings.", "cls.predictions."
    table: Table = {
        "embed.weight": [(emb + "word_embeddings.weight", None)],
        "pos_embed.weight": [(emb + "position_embeddings.weight", None)],
        "type_embed.weight": [(emb + "token_type_embeddings.weight", None)],
        "output_bias": [(pred + "decoder.bias", None)],  # what HF's forward adds
    }
    for kind in ("weight", "bias"):
        table[f"embed_norm.{kind}"] = [(f"{emb}LayerNorm.{kind}", None)]
        table[f"head.dense.{kind}"] = [(f"{pred}transform.dense.{kind}", None)]
        table[f"head.norm.{kind}"] = [(f"{pred}transform.LayerNorm.{kind}", None)]
        for i in range(cfg.n_layers):
            ours, hf = f"blocks.{i}.", f"bert.encoder.layer.{i}."
            attn = f"{hf}attention.self."
            table[f"{ours}attn.qkv.{kind}"] = [
                (f"{attn}query.{kind}", d),
                (f"{attn}key.{kind}", d),
                (f"{attn}value.{kind}", d),
            ]
            table[f"{ours}attn.out.{kind}"] = [(f"{hf}attention.output.dense.{kind}", None)]
            table[f"{ours}attn_norm.{kind}"] = [(f"{hf}attention.output.LayerNorm.{kind}", None)]
            table[f"{ours}mlp.up.{kind}"] = [(f"{hf}intermediate.dense.{kind}", None)]
            table[f"{ours}mlp.down.{kind}"] = [(f"{hf}output.dense.{kind}", None)]
            table[f"{ours}mlp_norm.{kind}"] = [(f"{hf}output.LayerNorm.{kind}", None)]
    return table


def _entries(cfg: EncoderConfig) -> list[Entry]:
    return [(name, targets, False) for name, targets in _table(cfg).items()]


def _to_hf_state(model: EncoderLM) -> dict[str, torch.Tensor]:
    out = to_hf_tensors(model.state_dict(), _entries(model.cfg))
    # HF's head keeps the bias twice (``bias`` and the tied ``decoder.bias``) and the tied
    # decoder weight under its own name.
    out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
    return out


def to_hf(model: EncoderLM) -> PreTrainedModel:
    """A ``BertForMaskedLM`` computing the same logits as ``model`` (token type 0).

    The HF model holds copies of the weights, with the dtype and device of ``model``, and is
    returned in eval mode.

    Raises:
        ValueError: naming the options with no exact HF equivalent.
    """
    import transformers

    hf_model = transformers.BertForMaskedLM(hf_config(model.cfg))
    return load_into_hf(hf_model, _to_hf_state(model), model.output_weight)


def _encoder_config(hf_model: Any) -> EncoderConfig:
    c = hf_model.config
    refused = []
    if c.hidden_act != "gelu":
        refused.append(f"hidden_act={c.hidden_act!r} (only 'gelu', the exact erf GELU)")
    if getattr(c, "position_embedding_type", "absolute") != "absolute":
        refused.append(f"position_embedding_type={c.position_embedding_type!r} (only absolute)")
    if c.is_decoder:
        refused.append("is_decoder=True (causal BERT)")
    if getattr(c, "add_cross_attention", False):
        refused.append("add_cross_attention=True")
    if getattr(c, "embedding_size", c.hidden_size) != c.hidden_size:
        refused.append(f"embedding_size={c.embedding_size} != hidden_size={c.hidden_size}")
    if c.hidden_size % c.num_attention_heads:
        refused.append(
            f"hidden_size={c.hidden_size} not divisible by "
            f"num_attention_heads={c.num_attention_heads}"
        )
    pred = hf_model.cls.predictions
    if not c.tie_word_embeddings or not torch.equal(
        pred.decoder.weight, hf_model.bert.embeddings.word_embeddings.weight
    ):
        refused.append("tie_word_embeddings=False (an MLM decoder weight of its own)")
    refuse(refused, "EncoderLM")
    return EncoderConfig(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        d_ff=c.intermediate_size,
        max_seq_len=c.max_position_embeddings,
        norm_eps=c.layer_norm_eps,
        init_std=c.initializer_range,
        type_vocab_size=c.type_vocab_size,
        pad_id=c.pad_token_id,
        style="bert",
    )


def from_hf(hf_model: PreTrainedModel, dtype: torch.dtype | None = torch.float32) -> EncoderLM:
    """An :class:`EncoderLM` with the weights of a ``BertForMaskedLM``.

    For continued pretraining from a local checkpoint: load it with
    ``AutoModelForMaskedLM.from_pretrained(local_dir)`` and pass the model here.

    Args:
        hf_model: the HF model; its weights are copied.
        dtype: parameter dtype of the result. float32 by default, because training keeps fp32
            master weights and checkpoints are often stored in bf16; None keeps the HF dtype.

    Raises:
        ValueError: for another architecture (RoBERTa's position offset, BertForPreTraining's
            NSP head...), or options :class:`EncoderLM` cannot express.
    """
    import transformers

    if not isinstance(hf_model, transformers.BertForMaskedLM):
        raise ValueError(
            f"unsupported model {type(hf_model).__name__}; valid: BertForMaskedLM "
            "(load with AutoModelForMaskedLM)"
        )
    cfg = _encoder_config(hf_model)
    param = hf_model.get_input_embeddings().weight
    state = from_hf_tensors(hf_model.state_dict(), _entries(cfg))
    return build_from_state(EncoderLM, cfg, state, param, dtype)
