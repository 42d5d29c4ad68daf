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

from pretrain.models.common.hf_convert import build_from_state, load_into_hf, refuse
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


# Per layer: (our parameter, HF's under ``transformer.layer.{i}.``, layout). Layouts: "same";
# "in", our (H*hd, d) input projection as HF's (d, H, hd); "out", our (d, H*hd) as (d, H, hd).
# ``attn.qkv.weight`` is HF's q, k and v ("in" each) stacked; it is handled apart.
LAYER_NAMES = [
    ("attn.pos.weight", "rel_attn.r", "in"),
    ("attn.out.weight", "rel_attn.o", "out"),
    ("attn.content_bias", "rel_attn.r_w_bias", "same"),
    ("attn.position_bias", "rel_attn.r_r_bias", "same"),
    ("attn.segment_bias", "rel_attn.r_s_bias", "same"),
    ("attn.segment_embed", "rel_attn.seg_embed", "same"),
    *[(f"{ours}.{kind}", f"{hf}.{kind}", "same")
      for ours, hf in (("attn.norm", "rel_attn.layer_norm"), ("mlp_norm", "ff.layer_norm"),
                       ("mlp.up", "ff.layer_1"), ("mlp.down", "ff.layer_2"))
      for kind in ("weight", "bias")],
]  # fmt: skip
TOP_NAMES = [  # (ours, HF) outside the layers; HF's mask_emb is (1, 1, d)
    ("embed.weight", "transformer.word_embedding.weight"),
    ("mask_embed", "transformer.mask_emb"),
    ("output_bias", "lm_loss.bias"),
]


def _to_hf_layout(w: torch.Tensor, layout: str, cfg: XLNetConfig) -> torch.Tensor:
    if layout == "in":
        return w.t().reshape(cfg.d_model, cfg.n_heads, cfg.head_dim)
    if layout == "out":
        return w.reshape(cfg.d_model, cfg.n_heads, cfg.head_dim)
    return w


def _from_hf_layout(w: torch.Tensor, layout: str, cfg: XLNetConfig) -> torch.Tensor:
    d = cfg.d_model
    if layout == "in":
        return w.reshape(d, d).t().contiguous()
    if layout == "out":
        return w.reshape(d, d)
    return w


def _to_hf_state(model: XLNetLM) -> dict[str, torch.Tensor]:
    cfg, d = model.cfg, model.cfg.d_model
    ours = model.state_dict()
    out = {hf: ours[name] for name, hf in TOP_NAMES}
    out["transformer.mask_emb"] = out["transformer.mask_emb"].view(1, 1, d)
    out["lm_loss.weight"] = ours["embed.weight"]
    for i in range(cfg.n_layers):
        hf, mine = f"transformer.layer.{i}.", f"blocks.{i}."
        for name, w in zip("qkv", ours[f"{mine}attn.qkv.weight"].split(d), strict=True):
            out[f"{hf}rel_attn.{name}"] = _to_hf_layout(w, "in", cfg)
        for name, hf_name, layout in LAYER_NAMES:
            out[hf + hf_name] = _to_hf_layout(ours[mine + name], layout, cfg)
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
    sd = hf_model.state_dict()
    state = {name: sd[hf] for name, hf in TOP_NAMES}
    state["mask_embed"] = state["mask_embed"].reshape(cfg.d_model)
    for i in range(cfg.n_layers):
        hf, mine = f"transformer.layer.{i}.", f"blocks.{i}."
        qkv = [_from_hf_layout(sd[f"{hf}rel_attn.{n}"], "in", cfg) for n in "qkv"]
        state[f"{mine}attn.qkv.weight"] = torch.cat(qkv)
        for name, hf_name, layout in LAYER_NAMES:
            state[mine + name] = _from_hf_layout(sd[hf + hf_name], layout, cfg)
    return build_from_state(XLNetLM, cfg, state, hf_model.transformer.word_embedding.weight, dtype)
