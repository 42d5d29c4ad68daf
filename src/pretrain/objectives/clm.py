"""Causal language modeling: predict token t+1 from tokens <= t (Radford et al., 2018/2019).

From a window of T+1 packed tokens, the inputs are the first T and the labels the last T
(shifted by one). With ``document_masking`` each position attends only to earlier positions of
its own document and position ids restart at 0 at each document start, so a packed window
trains exactly as its documents would separately (the Llama 3 practice, Dubey et al. 2024,
§3.2: "an attention mask that prevents self-attention between different documents").
"""

from __future__ import annotations

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import AttentionSpec, ModelBatch


def positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` position of each token inside its document (0 at each document start)."""
    B, T = document_ids.shape
    index = torch.arange(T, device=document_ids.device).expand(B, T)
    starts = torch.zeros_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index))
    return index - torch.cummax(start_index, dim=1).values


class CausalLM:
    """Next-token prediction over packed windows."""

    name = "clm"
    families = ("decoder",)
    reports_bits_per_byte = True  # a language-modeling measure: next-token loss over bytes
    reports_accuracy = False  # share of label tokens predicted right (MLM accuracy)

    def __init__(self, document_masking: bool = True):
        self.document_masking = document_masking

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        tokens = batch.tokens
        input_ids = tokens[:, :-1]  # (B, T)
        labels = tokens[:, 1:]  # (B, T)
        if not self.document_masking:
            return ModelBatch(input_ids, labels, AttentionSpec("causal"), objective=self.name)
        docs = batch.document_ids[:, :-1]
        return ModelBatch(
            input_ids=input_ids,
            labels=labels,
            attention=AttentionSpec("causal", document_ids=docs),
            position_ids=positions_within_documents(docs),
            objective=self.name,
        )
