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


def _per_head(w: torch.Tensor, cfg: XLNetConfig) -> torch.Tensor:
    """Our (H*hd, d) Linear weight as HF's (d, H, hd) input-projection tensor."""
    return w.t().reshape(cfg.d_model, cfg.n_heads, cfg.head_dim)


def _to_hf_state(model: XLNetLM) -> dict[str, torch.Tensor]:
    cfg, d = model.cfg, model.cfg.d_model
    out = {
        "transformer.word_embedding.weight": model.embed.weight,
        "transformer.mask_emb": model.mask_embed.view(1, 1, d),
        "lm_loss.weight": model.embed.weight,
        "lm_loss.bias": model.output_bias,
    }
    for i, block in enumerate(model.blocks):
        hf, a = f"transformer.layer.{i}.", block.attn
        q, k, v = a.qkv.weight.split(d)
        for name, w in (("q", q), ("k", k), ("v", v), ("r", a.pos.weight)):
            out[f"{hf}rel_attn.{name}"] = _per_head(w, cfg)
        out[f"{hf}rel_attn.o"] = a.out.weight.reshape(d, cfg.n_heads, cfg.head_dim)
        out[f"{hf}rel_attn.r_w_bias"] = a.content_bias
        out[f"{hf}rel_attn.r_r_bias"] = a.position_bias
        out[f"{hf}rel_attn.r_s_bias"] = a.segment_bias
        out[f"{hf}rel_attn.seg_embed"] = a.segment_embed
        for kind in ("weight", "bias"):
            out[f"{hf}rel_attn.layer_norm.{kind}"] = getattr(a.norm, kind)
            out[f"{hf}ff.layer_norm.{kind}"] = getattr(block.mlp_norm, kind)
            out[f"{hf}ff.layer_1.{kind}"] = getattr(block.mlp.up, kind)
            out[f"{hf}ff.layer_2.{kind}"] = getattr(block.mlp.down, kind)
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
    d = cfg.d_model
    sd = hf_model.state_dict()

    def linear(name: str) -> torch.Tensor:  # HF (d, H, hd) -> our (H*hd, d)
        return sd[name].reshape(d, d).t().contiguous()

    state = {
        "embed.weight": sd["transformer.word_embedding.weight"],
        "mask_embed": sd["transformer.mask_emb"].reshape(d),
        "output_bias": sd["lm_loss.bias"],
    }
    for i in range(cfg.n_layers):
        hf, ours = f"transformer.layer.{i}.", f"blocks.{i}."
        ra = f"{hf}rel_attn."
        state[f"{ours}attn.qkv.weight"] = torch.cat([linear(ra + n) for n in ("q", "k", "v")])
        state[f"{ours}attn.pos.weight"] = linear(ra + "r")
        state[f"{ours}attn.out.weight"] = sd[ra + "o"].reshape(d, d)
        state[f"{ours}attn.content_bias"] = sd[ra + "r_w_bias"]
        state[f"{ours}attn.position_bias"] = sd[ra + "r_r_bias"]
        state[f"{ours}attn.segment_bias"] = sd[ra + "r_s_bias"]
        state[f"{ours}attn.segment_embed"] = sd[ra + "seg_embed"]
        for kind in ("weight", "bias"):
            state[f"{ours}attn.norm.{kind}"] = sd[f"{ra}layer_norm.{kind}"]
            state[f"{ours}mlp_norm.{kind}"] = sd[f"{hf}ff.layer_norm.{kind}"]
            state[f"{ours}mlp.up.{kind}"] = sd[f"{hf}ff.layer_1.{kind}"]
            state[f"{ours}mlp.down.{kind}"] = sd[f"{hf}ff.layer_2.{kind}"]
    return build_from_state(XLNetLM, cfg, state, hf_model.transformer.word_embedding.weight, dtype)
