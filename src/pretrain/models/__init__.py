"""Model families. Each takes a :class:`~pretrain.objectives.base.ModelBatch` and returns
hidden states; the loss projects them through the family's ``output_weight``."""

from pretrain.models.decoder import DecoderConfig, DecoderLM, decoder_config

__all__ = ["DecoderConfig", "DecoderLM", "decoder_config"]
