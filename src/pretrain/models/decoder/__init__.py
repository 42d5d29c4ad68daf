"""Decoder-only language models (Llama and GPT-2 styles)."""

from pretrain.models.decoder.configs import SIZES, DecoderConfig, decoder_config
from pretrain.models.decoder.model import Block, DecoderLM

__all__ = ["SIZES", "Block", "DecoderConfig", "DecoderLM", "decoder_config"]
