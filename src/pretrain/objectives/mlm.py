"""Masked language modeling over packed windows (Devlin et al. 2019; Liu et al. 2019).

Each draw masks anew (RoBERTa's dynamic masking): the corruption is a function of the
trainer's generator, whose state is checkpointed, so resuming reproduces it exactly. The
encoder sees the first T tokens of each window bidirectionally; with ``document_masking`` no
position attends to another document of the window (RoBERTa's DOC-SENTENCES; without it,
FULL-SENTENCES) and positions restart at each document. See :mod:`.mlm_masking` for the
selection and replacement rules.
"""

from __future__ import annotations

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.objectives.clm import positions_within_documents
from pretrain.objectives.mlm_masking import mask_tokens
from pretrain.objectives.words import WordBoundaries


class MaskedLM:
    """BERT/RoBERTa MLM: 15% of non-special tokens, 80% mask / 10% random / 10% kept."""

    name = "mlm"
    families = ("encoder",)
    reports_bits_per_byte = False  # a language-modeling measure: next-token loss over bytes
    reports_accuracy = True  # share of label tokens predicted right (MLM accuracy)

    def __init__(
        self,
        mask_id: int,
        vocab_size: int,
        special_ids: list[int],
        probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        exact_count: bool = False,
        max_predictions: int | None = None,
        words: WordBoundaries | None = None,
        document_masking: bool = True,
    ):
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.special_ids = special_ids
        self.probability = probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.exact_count = exact_count
        self.max_predictions = max_predictions
        self.words = words  # whole-word masking when given
        self.document_masking = document_masking

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        if generator is None:
            raise ValueError("MLM draws a new masking per batch: pass a torch.Generator")
        tokens = batch.tokens[:, :-1]  # (B, T)
        word_starts = None if self.words is None else self.words.starts(tokens)
        inputs, labels = mask_tokens(
            tokens,
            generator,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            probability=self.probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            exact_count=self.exact_count,
            word_starts=word_starts,
            max_predictions=self.max_predictions,
        )
        if not self.document_masking:
            return ModelBatch(inputs, labels, AttentionSpec("bidirectional"), objective=self.name)
        docs = batch.document_ids[:, :-1]
        return ModelBatch(
            input_ids=inputs,
            labels=labels,
            attention=AttentionSpec("bidirectional", document_ids=docs),
            position_ids=positions_within_documents(docs),
            objective=self.name,
        )
