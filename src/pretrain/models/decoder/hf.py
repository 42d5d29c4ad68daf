"""Conversion between :class:`DecoderLM` and Hugging Face ``transformers`` models.

``llama`` style maps to ``LlamaForCausalLM`` (``MixtralForCausalLM`` with experts), ``gpt2``
style to ``GPT2LMHeadModel``. The weights are the same numbers in a different layout: our
fused ``qkv`` and ``gate_up`` rows
split into HF's separate projections, and GPT-2's ``Conv1D`` stores ``(in, out)`` matrices, the
transpose of ``nn.Linear``. Options with no exact HF counterpart are refused with a
``ValueError`` naming them, never approximated.

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
from pretrain.models.decoder.configs import DecoderConfig
from pretrain.models.decoder.model import DecoderLM

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

_GPT2_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh approximation


def hf_config(cfg: DecoderConfig) -> PretrainedConfig:
    """The ``LlamaConfig`` or ``GPT2Config`` describing the same network as ``cfg``.

    Raises:
        ValueError: naming every option of ``cfg`` the HF architecture cannot express.
    """
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        # Token ids belong to the tokenizer; export sets them.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        # SDPA is what our model runs; "eager" would also match within fp32 rounding.
        attn_implementation="sdpa",
    )
    if cfg.style == "llama":
        name = "MixtralForCausalLM" if cfg.n_experts else "LlamaForCausalLM"
        refused = [f"qk_norm=True ({name} has no q/k norm)"] if cfg.qk_norm else []
        if cfg.n_experts and cfg.bias:
            refused.append("bias=True (Mixtral has no biases)")
        refuse(refused, name)
        llama = dict(
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            hidden_act="silu",
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            attention_dropout=0.0,
            **common,
        )
        if cfg.n_experts:
            return transformers.MixtralConfig(
                sliding_window=None,
                num_local_experts=cfg.n_experts,
                num_experts_per_tok=cfg.experts_per_token,
                router_aux_loss_coef=cfg.router_aux_loss_coef,
                router_jitter_noise=0.0,
                **llama,
            )
        return transformers.LlamaConfig(attention_bias=cfg.bias, mlp_bias=cfg.bias, **llama)
    refused = []
    if cfg.qk_norm:
        refused.append("qk_norm=True (GPT2LMHeadModel has no q/k norm)")
    if cfg.n_kv_heads != cfg.n_heads:
        refused.append(f"n_kv_heads={cfg.n_kv_heads} != n_heads={cfg.n_heads} (no GQA in GPT-2)")
    if not cfg.bias:
        refused.append("bias=False (GPT-2's Conv1D and LayerNorm always have biases)")
    refuse(refused, "GPT2LMHeadModel")
    return transformers.GPT2Config(
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        n_positions=cfg.max_seq_len,
        activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps,
        # Our model has no dropout; zero keeps a fine-tuned export the same network.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **common,
    )


# A name table per style: our name -> [(HF name, rows)], where several entries are row blocks
# of one fused matrix of ours (rows None: the whole tensor), and a transpose flag for GPT-2's
# Conv1D, which stores (in, out) where nn.Linear stores (out, in).
Table = dict[str, tuple[list[tuple[str, int | None]], bool]]


def _llama_table(cfg: DecoderConfig) -> Table:
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    table: Table = {
        "embed.weight": ([("model.embed_tokens.weight", None)], False),
        "norm.weight": ([("model.norm.weight", None)], False),
    }
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        table[ours + "attn_norm.weight"] = ([(hf + "input_layernorm.weight", None)], False)
        table[ours + "mlp_norm.weight"] = ([(hf + "post_attention_layernorm.weight", None)], False)
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            attn, mlp = f"{hf}self_attn.", f"{hf}mlp."
            table[f"{ours}attn.qkv.{kind}"] = (
                [
                    (f"{attn}q_proj.{kind}", q_rows),
                    (f"{attn}k_proj.{kind}", kv_rows),
                    (f"{attn}v_proj.{kind}", kv_rows),
                ],
                False,
            )
            table[f"{ours}attn.out.{kind}"] = ([(f"{attn}o_proj.{kind}", None)], False)
            if cfg.n_experts:  # Mixtral: the router is HF's gate; experts stacked (E, ...)
                table[ours + "mlp.router.weight"] = ([(hf + "mlp.gate.weight", None)], False)
                table[ours + "mlp.gate_up"] = ([(hf + "mlp.experts.gate_up_proj", None)], False)
                table[ours + "mlp.down"] = ([(hf + "mlp.experts.down_proj", None)], False)
                continue
            table[f"{ours}mlp.gate_up.{kind}"] = (
                [(f"{mlp}gate_proj.{kind}", cfg.d_ff), (f"{mlp}up_proj.{kind}", cfg.d_ff)],
                False,
            )
            table[f"{ours}mlp.down.{kind}"] = ([(f"{mlp}down_proj.{kind}", None)], False)
    return table


# (ours, HF, Conv1D weight) for each tensor of a GPT-2 block.
_GPT2_BLOCK = [
    ("attn_norm.weight", "ln_1.weight", False),
    ("attn_norm.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.out.weight", "attn.c_proj.weight", True),
    ("attn.out.bias", "attn.c_proj.bias", False),
    ("mlp_norm.weight", "ln_2.weight", False),
    ("mlp_norm.bias", "ln_2.bias", False),
    ("mlp.up.weight", "mlp.c_fc.weight", True),
    ("mlp.up.bias", "mlp.c_fc.bias", False),
    ("mlp.down.weight", "mlp.c_proj.weight", True),
    ("mlp.down.bias", "mlp.c_proj.bias", False),
]


def _gpt2_table(cfg: DecoderConfig) -> Table:
    table: Table = {
        "embed.weight": ([("transformer.wte.weight", None)], False),
        "pos_embed.weight": ([("transformer.wpe.weight", None)], False),
        "norm.weight": ([("transformer.ln_f.weight", None)], False),
        "norm.bias": ([("transformer.ln_f.bias", None)], False),
    }
    for i in range(cfg.n_layers):
        for ours, hf, conv in _GPT2_BLOCK:
            table[f"blocks.{i}.{ours}"] = ([(f"transformer.h.{i}.{hf}", None)], conv)
    return table


def _table(cfg: DecoderConfig) -> Table:
    table = _llama_table(cfg) if cfg.style == "llama" else _gpt2_table(cfg)
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = ([("lm_head.weight", None)], False)
    return table


def _entries(cfg: DecoderConfig) -> list[Entry]:
    return [(name, targets, transpose) for name, (targets, transpose) in _table(cfg).items()]


def hf_state(model: DecoderLM) -> dict[str, torch.Tensor]:
    """``model``'s weights under the names and layout of its Hugging Face causal LM."""
    out = to_hf_tensors(model.state_dict(), _entries(model.cfg))
    # HF always has an lm_head; tied, it is the embedding.
    out["lm_head.weight"] = model.output_weight.detach()
    return out


def to_hf(model: DecoderLM) -> PreTrainedModel:
    """A ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` computing the same logits as ``model``.

    The HF model holds copies of the weights, with the dtype and device of ``model``, and is
    returned in eval mode.

    Raises:
        ValueError: naming the options with no exact HF equivalent.
    """
    import transformers

    cfg = model.cfg
    config = hf_config(cfg)
    hf_cls = transformers.LlamaForCausalLM if cfg.style == "llama" else transformers.GPT2LMHeadModel
    if cfg.n_experts:
        hf_cls = transformers.MixtralForCausalLM
    return load_into_hf(hf_cls(config), hf_state(model), model.output_weight)


def _llama_decoder_config(c: Any) -> DecoderConfig:
    rope = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10_000.0))
    refused = []
    if c.hidden_act != "silu":
        refused.append(f"hidden_act={c.hidden_act!r} (only 'silu' SwiGLU)")
    attention_bias = bool(getattr(c, "attention_bias", False))  # Mixtral's config has none
    if attention_bias != bool(getattr(c, "mlp_bias", False)):
        refused.append("attention_bias != mlp_bias (one bias flag for both)")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        refused.append(f"head_dim={head_dim} != hidden_size / num_attention_heads")
    if rope_type != "default":
        refused.append(f"rope_type={rope_type!r} (only default RoPE, no scaling)")
    refuse(refused, "DecoderLM")
    return DecoderConfig(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        d_ff=c.intermediate_size,
        style="llama",
        max_seq_len=c.max_position_embeddings,
        rope_theta=float(theta),
        norm_eps=c.rms_norm_eps,
        tie_embeddings=bool(c.tie_word_embeddings),
        bias=attention_bias,
        init_std=c.initializer_range,
    )


def _mixtral_decoder_config(c: Any) -> DecoderConfig:
    refused = []
    if getattr(c, "sliding_window", None) is not None:
        refused.append(f"sliding_window={c.sliding_window} (attention over the whole window)")
    if getattr(c, "router_jitter_noise", 0.0):
        refused.append(f"router_jitter_noise={c.router_jitter_noise}")
    refuse(refused, "DecoderLM")
    cfg = _llama_decoder_config(c)
    cfg.n_experts = c.num_local_experts
    cfg.experts_per_token = c.num_experts_per_tok
    cfg.router_aux_loss_coef = c.router_aux_loss_coef
    cfg.__post_init__()
    return cfg


def _gpt2_decoder_config(c: Any) -> DecoderConfig:
    refused = []
    if c.activation_function not in _GPT2_GELU:
        refused.append(f"activation_function={c.activation_function!r} (only tanh GELU)")
    if not c.scale_attn_weights:
        refused.append("scale_attn_weights=False")
    if c.scale_attn_by_inverse_layer_idx:
        refused.append("scale_attn_by_inverse_layer_idx=True")
    if getattr(c, "add_cross_attention", False):
        refused.append("add_cross_attention=True")
    refuse(refused, "DecoderLM")
    return DecoderConfig(
        vocab_size=c.vocab_size,
        d_model=c.n_embd,
        n_layers=c.n_layer,
        n_heads=c.n_head,
        d_ff=c.n_inner or 4 * c.n_embd,
        style="gpt2",
        max_seq_len=c.n_positions,
        norm_eps=c.layer_norm_epsilon,
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        bias=True,
        init_std=c.initializer_range,
    )


def from_hf(hf_model: PreTrainedModel, dtype: torch.dtype | None = torch.float32) -> DecoderLM:
    """A :class:`DecoderLM` with the weights of a ``LlamaForCausalLM`` or ``GPT2LMHeadModel``.

    For continued pretraining from a local checkpoint: load it with
    ``AutoModelForCausalLM.from_pretrained(local_dir)`` and pass the model here.

    Args:
        hf_model: the HF model; its weights are copied.
        dtype: parameter dtype of the result. float32 by default, because training keeps fp32
            master weights and checkpoints are often stored in bf16; None keeps the HF dtype.

    Raises:
        ValueError: for another architecture, or options :class:`DecoderLM` cannot express.
    """
    c = hf_model.config
    if c.model_type == "llama":
        cfg = _llama_decoder_config(c)
    elif c.model_type == "mixtral":
        cfg = _mixtral_decoder_config(c)
    elif c.model_type == "gpt2":
        cfg = _gpt2_decoder_config(c)
    else:
        raise ValueError(f"unsupported model_type {c.model_type!r}; valid: llama, mixtral, gpt2")
    param = hf_model.get_input_embeddings().weight
    state = from_hf_tensors(hf_model.state_dict(), _entries(cfg))
    model = build_from_state(DecoderLM, cfg, state, param, dtype)
    if model.rope is not None:  # non-persistent: rebuilt rather than loaded
        model.rope.reset_parameters()
    return model
