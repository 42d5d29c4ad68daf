"""A sequence classifier on a pretrained model: pooled hidden states and a linear head.

How each family's text becomes one vector:

- encoder (BERT, Devlin et al. 2019): the mean of the last hidden states (before the MLM
  head) over the text's tokens. BERT pooled its ``[CLS]`` token, which our masked-LM
  pretraining does not prepend; mean pooling needs no such token (Reimers & Gurevych 2019
  found it at least as good for BERT's features).
- encoder-decoder (T5): the mean of the encoder's output, the decoder unused.
- decoder (GPT, Radford et al. 2018, §3.2-3.3): the final hidden state at an EOS appended to
  the text, the one position that has seen all of it, times a matrix without bias (GPT's
  ``softmax(h W_y)``, and Hugging Face's ``*ForSequenceClassification`` decoders, so that a
  fine-tuned decoder exports to them exactly: :mod:`pretrain.export_classifier`).

Batches are right-padded with the pad id; padding never changes a text's vector (padded keys
are hidden from the encoders, and a causal decoder's real tokens never see the pads after
them).
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.objectives.base import AttentionSpec

POOLED_FAMILIES = ("encoder", "encoder_decoder", "decoder")


class SequenceClassifier(nn.Module):
    """``head(pool(backbone(input_ids)))``: logits (B, num_labels)."""

    def __init__(self, backbone: nn.Module, family: str, num_labels: int, pad_id: int) -> None:
        super().__init__()
        if family not in POOLED_FAMILIES:
            raise ValueError(
                f"fine-tuning a classifier supports model.family {', '.join(POOLED_FAMILIES)}; "
                f"not {family!r}"
            )
        self.backbone, self.family, self.pad_id = backbone, family, pad_id
        d_model = backbone.cfg.d_model
        self.head = nn.Linear(d_model, num_labels, bias=family != "decoder")
        nn.init.normal_(self.head.weight, std=d_model**-0.5)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids))

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One vector (B, d_model) per row of right-padded ``input_ids`` (B, T)."""
        real = input_ids != self.pad_id  # (B, T)
        if self.family == "decoder":
            hidden = self.backbone.forward_tokens(input_ids)  # (B, T, d): causal
            last = real.sum(dim=1) - 1  # the appended EOS
            return hidden[torch.arange(len(input_ids), device=hidden.device), last]
        if self.family == "encoder":
            # Pads form a "document" of their own, so the text never attends to them.
            spec = AttentionSpec(kind="bidirectional", document_ids=(~real).int())
            hidden = self.backbone.encode(input_ids, attention=spec)  # (B, T, d)
        else:
            hidden = self.backbone.encode(input_ids)  # pad keys hidden by the model
        weights = real.to(hidden.dtype)[..., None]  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
