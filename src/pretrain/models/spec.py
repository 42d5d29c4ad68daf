"""Model families by name: build a model from the ``model`` section of a config.

``model.family`` picks the family, ``model.size`` a named size of it, and any other key of the
section overrides one field of that size (free shapes).
"""

from __future__ import annotations

import logging

from torch import nn

from pretrain.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

BUILT_FAMILIES = ("decoder", "encoder", "encoder_decoder", "xlnet")


def _family_classes(family: str):
    """(config function, config class, model class) of a family."""
    if family == "decoder":
        from pretrain.models.decoder.configs import DecoderConfig, decoder_config
        from pretrain.models.decoder.model import DecoderLM

        return decoder_config, DecoderConfig, DecoderLM
    if family == "encoder":
        from pretrain.models.encoder.configs import EncoderConfig, encoder_config
        from pretrain.models.encoder.model import EncoderLM

        return encoder_config, EncoderConfig, EncoderLM
    if family == "encoder_decoder":
        from pretrain.models.encoder_decoder.configs import (
            EncoderDecoderConfig,
            encoder_decoder_config,
        )
        from pretrain.models.encoder_decoder.model import EncoderDecoderLM

        return encoder_decoder_config, EncoderDecoderConfig, EncoderDecoderLM
    if family == "xlnet":
        from pretrain.models.xlnet.configs import XLNetConfig, xlnet_config
        from pretrain.models.xlnet.model import XLNetLM

        return xlnet_config, XLNetConfig, XLNetLM
    raise ConfigError(
        f"model.family {family!r} is not available yet; available: {list(BUILT_FAMILIES)}"
    )


def build_model(
    cfg: ModelConfig, vocab_size: int, seq_len: int, pad_id: int | None = None
) -> nn.Module:
    """A freshly initialized model (or one imported from ``model.init_from``).

    ``pad_id`` (the tokenizer's) is what an encoder-decoder masks in its encoder input and
    starts its decoder with.
    """
    config_fn, _, model_cls = _family_classes(cfg.family)
    if cfg.init_from:
        model = _import_hf(cfg.init_from, cfg.family)
        if model.cfg.vocab_size < vocab_size:
            raise ConfigError(
                f"model.init_from={cfg.init_from!r} has {model.cfg.vocab_size} token embeddings, "
                f"fewer than the tokenizer's {vocab_size}"
            )
        if cfg.attention_backend is not None and hasattr(model.cfg, "attention_backend"):
            model.cfg.attention_backend = cfg.attention_backend
    else:
        try:
            overrides = cfg.overrides()
            if cfg.family == "encoder_decoder" and pad_id is not None:
                overrides.setdefault("pad_id", pad_id)
            model = model_cls(config_fn(cfg.size, vocab_size, **overrides))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
    if seq_len > model.cfg.max_seq_len:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds the model's max_seq_len={model.cfg.max_seq_len} "
            "(set model.max_seq_len)"
        )
    return model


def model_from_config_dict(family: str, config: dict) -> nn.Module:
    """Rebuild a model from the architecture a run recorded (``model_config.json``)."""
    _, config_cls, model_cls = _family_classes(family)
    return model_cls(config_cls(**config))


def to_hf(model: nn.Module, family: str):
    """The Hugging Face model of the same family with the same weights."""
    if family == "decoder":
        from pretrain.models.decoder.hf import to_hf as convert
    elif family == "encoder":
        from pretrain.models.encoder.hf import to_hf as convert
    elif family == "xlnet":
        from pretrain.models.xlnet.hf import to_hf as convert
    else:
        from pretrain.models.encoder_decoder.hf import to_hf as convert
    return convert(model)


def _import_hf(path: str, family: str) -> nn.Module:
    try:
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForMaskedLM,
            AutoModelForSeq2SeqLM,
        )
    except ImportError as e:
        raise ConfigError("model.init_from needs transformers: pip install 'pretrain[hf]'") from e
    if family == "decoder":
        from pretrain.models.decoder.hf import from_hf

        hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    elif family == "encoder_decoder":
        from pretrain.models.encoder_decoder.hf import from_hf

        hf_model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True)
    elif family == "xlnet":
        from transformers import XLNetLMHeadModel

        from pretrain.models.xlnet.hf import from_hf

        hf_model = XLNetLMHeadModel.from_pretrained(path, local_files_only=True)
    else:
        from pretrain.models.encoder.hf import from_hf

        hf_model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
    log.info("continuing pretraining from the Hugging Face checkpoint %s", path)
    return from_hf(hf_model)


def matmul_params(model: nn.Module) -> int:
    """Parameters used in matmuls: every matrix but embedding tables, plus the output head.

    A mixture of experts counts what one token runs through: its ``k`` experts' matrices
    (``MoE.active_matmul_params``), not all ``E``; the FLOPs per token follow from these."""
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
    from pretrain.models.common.moe import MoE

    experts = (m for m in model.modules() if isinstance(m, MoE))  # stacked (E, ...): 3-D
    return total + sum(m.active_matmul_params() for m in experts)
