"""Encoder-decoder language models (T5 v1.1 architecture; Raffel et al. 2020)."""

from pretrain.models.encoder_decoder.configs import (
    SIZES,
    EncoderDecoderConfig,
    encoder_decoder_config,
)
from pretrain.models.encoder_decoder.model import DecoderBlock, EncoderBlock, EncoderDecoderLM

__all__ = [
    "SIZES",
    "DecoderBlock",
    "EncoderBlock",
    "EncoderDecoderConfig",
    "EncoderDecoderLM",
    "encoder_decoder_config",
]
