"""Conversion between :class:`XLNetLM` and Hugging Face ``XLNetLMHeadModel``.

The same numbers in another layout: HF keeps each attention projection as a (d_model, H, hd)
tensor used by einsum, we keep ``nn.Linear`` weights (out, in) with q, k and v fused:
``W_q = q.reshape(d, H*hd).T`` and ``W_o = o.reshape(d, H*hd)``. HF's ``lm_loss`` is our tied
word embedding plus ``output_bias``. Options with no exact counterpart (memory, ``bi_data``,
uni-directional attention, another activation) are refused with a ``ValueError`` naming them.
Dropout is set to zero on export: our model has none.

``transformers`` is an optional extra (``pretrain[hf]``) and is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pretrain.models.common.hf_convert import (
    Entry,
    build_from_state,
    from_hf_tensors,
    load_into_hf,
    refuse,
    to_hf_tensors,
)
from pretrain.models.xlnet.configs import XLNetConfig
from pretrain.models.xlnet.model import XLNetLM

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


def hf_config(cfg: XLNetConfig) -> PretrainedConfig:
    """The ``XLNetConfig`` (transformers) of the same network, dropout zero, no memory.

    Raises:
        ValueError: for ``position_encoding="rope"``: HF XLNet has Transformer-XL positions
            only.
    """
    import transformers

    if cfg.position_encoding != "txl":
        refuse(
            [f"position_encoding={cfg.position_encoding!r} (only 'txl', Transformer-XL)"],
            "XLNetLMHeadModel",
        )

    return transformers.XLNetConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        d_inner=cfg.d_ff,
        ff_activation="gelu",  # exact erf GELU
        attn_type="bi",
        bi_data=False,
        clamp_len=cfg.clamp_len,
        same_length=False,
        mem_len=None,
        reuse_len=None,
        use_mems_train=False,
        use_mems_eval=False,
        layer_norm_eps=cfg.norm_eps,
        initializer_range=cfg.init_std,
        dropout=0.0,
        tie_word_embeddings=True,
    )


# Per layer: (our parameter, HF's under ``transformer.layer.{i}.``), one tensor each; our fused
# ``attn.qkv.weight`` is HF's q, k and v stacked by rows (see :func:`_entries`).
LAYER_NAMES = [
    ("attn.pos.weight", "rel_attn.r"),
    ("attn.out.weight", "rel_attn.o"),
    ("attn.content_bias", "rel_attn.r_w_bias"),
    ("attn.position_bias", "rel_attn.r_r_bias"),
    ("attn.segment_bias", "rel_attn.r_s_bias"),
    ("attn.segment_embed", "rel_attn.seg_embed"),
    *[(f"{ours}.{kind}", f"{hf}.{kind}")
      for ours, hf in (("attn.norm", "rel_attn.layer_norm"), ("mlp_norm", "ff.layer_norm"),
                       ("mlp.up", "ff.layer_1"), ("mlp.down", "ff.layer_2"))
      for kind in ("weight", "bias")],
]  # fmt: skip
# HF keeps these as (d_model, H, hd) einsum operands: the input projections q, k, v, r hold
# our (out, in) Linear weight transposed, the output projection o holds ours as it is.
IN_PROJECTIONS = ("rel_attn.q", "rel_attn.k", "rel_attn.v", "rel_attn.r")
OUT_PROJECTION = "rel_attn.o"


def _entries(cfg: XLNetConfig) -> list[Entry]:
    """Our names against HF's, with HF's tensors in ``nn.Linear`` layout (see
    :func:`_per_head`)."""
    entries: list[Entry] = [
        ("embed.weight", [("transformer.word_embedding.weight", None)], False),
        ("mask_embed", [("transformer.mask_emb", None)], False),
        ("output_bias", [("lm_loss.bias", None)], False),
    ]
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}.", f"transformer.layer.{i}."
        qkv = [(f"{hf}rel_attn.{n}", cfg.d_model) for n in "qkv"]
        entries.append((ours + "attn.qkv.weight", qkv, False))
        entries += [(ours + name, [(hf + hf_name, None)], False) for name, hf_name in LAYER_NAMES]
    return entries


def _per_head(state: dict[str, torch.Tensor], cfg: XLNetConfig, to_hf: bool) -> None:
    """Reshape, in ``state``, the attention projections between ``nn.Linear`` layout and HF's
    ``(d_model, H, hd)``, and the mask embedding between ``(d,)`` and HF's ``(1, 1, d)``."""
    d, per_head = cfg.d_model, (cfg.d_model, cfg.n_heads, cfg.head_dim)
    for name, t in state.items():
        if name.endswith(IN_PROJECTIONS):
            state[name] = t.t().reshape(per_head) if to_hf else t.reshape(d, d).t()
        elif name.endswith(OUT_PROJECTION):
            state[name] = t.reshape(per_head if to_hf else (d, d))
    mask = state["transformer.mask_emb"]
    state["transformer.mask_emb"] = mask.view(1, 1, d) if to_hf else mask.reshape(d)


def _to_hf_state(model: XLNetLM) -> dict[str, torch.Tensor]:
    out = to_hf_tensors(model.state_dict(), _entries(model.cfg))
    _per_head(out, model.cfg, to_hf=True)
    out["lm_loss.weight"] = out["transformer.word_embedding.weight"]
    return {name: t.detach().clone() for name, t in out.items()}


def to_hf(model: XLNetLM) -> PreTrainedModel:
    """An ``XLNetLMHeadModel`` computing the same logits as ``model`` for the same
    ``perm_mask`` and ``target_mapping``; copies of the weights, eval mode."""
    import transformers

    hf_model = transformers.XLNetLMHeadModel(hf_config(model.cfg))
    return load_into_hf(hf_model, _to_hf_state(model), model.output_weight)


def _config(hf_model) -> XLNetConfig:
    c = hf_model.config
    refused = []
    if c.ff_activation != "gelu":
        refused.append(f"ff_activation={c.ff_activation!r} (only 'gelu', the exact erf GELU)")
    if c.attn_type != "bi":
        refused.append(f"attn_type={c.attn_type!r} (only 'bi')")
    if c.bi_data:
        refused.append("bi_data=True")
    if c.same_length:
        refused.append("same_length=True")
    if c.d_head * c.n_head != c.d_model:
        refused.append(f"d_head={c.d_head} * n_head={c.n_head} != d_model={c.d_model}")
    if not torch.equal(hf_model.lm_loss.weight, hf_model.transformer.word_embedding.weight):
        refused.append("an output layer not tied to the word embedding")
    refuse(refused, "XLNetLM")
    return XLNetConfig(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        n_layers=c.n_layer,
        n_heads=c.n_head,
        d_ff=c.d_inner,
        norm_eps=c.layer_norm_eps,
        init_std=c.initializer_range,
        clamp_len=c.clamp_len,
    )


def from_hf(hf_model: PreTrainedModel, dtype: torch.dtype | None = torch.float32) -> XLNetLM:
    """An :class:`XLNetLM` with the weights of an ``XLNetLMHeadModel`` (copied).

    ``dtype``: of the result; float32 by default (fp32 master weights), None keeps HF's.

    Raises:
        ValueError: for another class, or options :class:`XLNetLM` cannot express.
    """
    import transformers

    if not isinstance(hf_model, transformers.XLNetLMHeadModel):
        raise ValueError(f"unsupported model {type(hf_model).__name__}; valid: XLNetLMHeadModel")
    cfg = _config(hf_model)
    sd = dict(hf_model.state_dict())
    _per_head(sd, cfg, to_hf=False)
    state = from_hf_tensors(sd, _entries(cfg))
    return build_from_state(XLNetLM, cfg, state, hf_model.transformer.word_embedding.weight, dtype)
