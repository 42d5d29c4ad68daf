"""Encoder-only masked language models (BERT / RoBERTa architecture)."""

from pretrain.models.encoder.configs import SIZES, EncoderConfig, encoder_config
from pretrain.models.encoder.model import EncoderBlock, EncoderLM

__all__ = ["SIZES", "EncoderBlock", "EncoderConfig", "EncoderLM", "encoder_config"]
