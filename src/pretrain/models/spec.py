"""Model families by name: build a model from the ``model`` section of a config.

``model.family`` picks the family, ``model.size`` a named size of it, and any other key of the
section overrides one field of that size (free shapes).
"""

from __future__ import annotations

import logging

from torch import nn

from pretrain.config import ConfigError, ModelConfig
from pretrain.scaling.flops import flops_per_token

log = logging.getLogger(__name__)

BUILT_FAMILIES = ("decoder",)


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int) -> nn.Module:
    """A freshly initialized model (or one imported from ``model.init_from``)."""
    if cfg.family not in BUILT_FAMILIES:
        raise ConfigError(
            f"model.family {cfg.family!r} is not available yet; available: {list(BUILT_FAMILIES)}"
        )
    from pretrain.models.decoder.configs import decoder_config
    from pretrain.models.decoder.model import DecoderLM

    if cfg.init_from:
        model = _import_hf(cfg.init_from)
        if model.cfg.vocab_size < vocab_size:
            raise ConfigError(
                f"model.init_from={cfg.init_from!r} has {model.cfg.vocab_size} token embeddings, "
                f"fewer than the tokenizer's {vocab_size}"
            )
        if cfg.attention_backend is not None:
            model.cfg.attention_backend = cfg.attention_backend
    else:
        try:
            model = DecoderLM(decoder_config(cfg.size, vocab_size, **cfg.overrides()))
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
    if seq_len > model.cfg.max_seq_len:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds the model's max_seq_len={model.cfg.max_seq_len} "
            "(set model.max_seq_len)"
        )
    return model


def _import_hf(path: str) -> nn.Module:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise ConfigError("model.init_from needs transformers: pip install 'pretrain[hf]'") from e
    from pretrain.models.decoder.hf import from_hf

    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    log.info("continuing pretraining from the Hugging Face checkpoint %s", path)
    return from_hf(hf_model)


def matmul_params(model: nn.Module) -> int:
    """Parameters used in matmuls: every matrix but embedding tables, plus the output head."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.ndim == 2 and id(p) not in embeddings and id(p) not in seen:
            total += p.numel()
        seen.add(id(p))
    out = model.output_weight
    if id(out) in embeddings:  # tied: the embedding table doubles as the output matmul
        total += out.numel()
    return total


def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    cfg = model.cfg
    return flops_per_token(matmul_params(model), cfg.n_layers, cfg.n_heads, cfg.head_dim, seq_len)
