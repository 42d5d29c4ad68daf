"""Decoder-only prefix LM (Raffel et al. 2020, §3.2.1; seqio ``PrefixLMFeatureConverter``).

A window of T+1 tokens is split at a random prefix length P (T5's ``random_prefix_noise_mask``,
uniform on ``[1, T]`` at noise density 0.5). The first P input positions attend to each other
bidirectionally, the rest causally, and only the suffix is predicted: the label at input
position t is token t+1 when t >= P - 1, ``IGNORE_INDEX`` before. For a window
``[BOS, inputs..., targets...]`` with P = 1 + len(inputs) this is exactly seqio's converter
(bidirectional over ``len(inputs) + 1`` positions, loss on the targets only). With document
masking no position sees another document of the window.
"""

from __future__ import annotations

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import (
    IGNORE_INDEX,
    AttentionSpec,
    ModelBatch,
    encoder_decoder_batch,
    noised_windows,
)
from pretrain.objectives.clm import positions_within_documents
from pretrain.objectives.noise import random_prefix_length


def prefix_lm_batch(
    tokens: torch.Tensor,
    prefix_lengths: torch.Tensor,
    document_ids: torch.Tensor | None = None,
    objective: str = "prefix_lm",
) -> ModelBatch:
    """The ModelBatch for windows ``tokens`` ``(B, T+1)`` with prefixes of ``prefix_lengths``."""
    input_ids = tokens[:, :-1]  # (B, T)
    T = input_ids.shape[1]
    in_suffix = torch.arange(T)[None, :] >= (prefix_lengths[:, None] - 1)  # predicts a target
    labels = torch.where(in_suffix, tokens[:, 1:], torch.full_like(input_ids, IGNORE_INDEX))
    docs = None if document_ids is None else document_ids[:, :-1]
    return ModelBatch(
        input_ids=input_ids,
        labels=labels,
        attention=AttentionSpec("prefix", document_ids=docs, prefix_lengths=prefix_lengths),
        position_ids=None if docs is None else positions_within_documents(docs),
        objective=objective,
    )


class PrefixLM:
    """Prefix LM over packed windows, a new split point for every window."""

    name = "prefix_lm"
    families = ("decoder", "encoder_decoder")  # the latter built as EncoderDecoderPrefixLM
    reports_bits_per_byte = False  # a language-modeling measure: next-token loss over bytes
    reports_accuracy = False  # share of label tokens predicted right (MLM accuracy)

    def __init__(self, noise_density: float = 0.5, document_masking: bool = True):
        self.noise_density = noise_density
        self.document_masking = document_masking

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        if generator is None:
            raise ValueError("prefix LM draws a split point per window: pass a torch.Generator")
        tokens = batch.tokens
        length = tokens.shape[1]  # T + 1 raw tokens per window
        prefix = torch.tensor(
            [random_prefix_length(length, self.noise_density, generator) for _ in tokens],
            dtype=torch.long,
        )
        docs = batch.document_ids if self.document_masking else None
        return prefix_lm_batch(tokens, prefix, docs, self.name)


class EncoderDecoderPrefixLM:
    """Prefix LM for encoder-decoder models (Raffel et al. 2020, §3.2.1 and Table 4's "prefix
    LM" for the encoder-decoder; ``t5.data.preprocessors.prefix_lm``): the prefix goes to the
    encoder, the decoder predicts the rest.

    Each example is a window of ``seq_len - 1`` raw tokens split at P (T5's
    ``random_prefix_noise_mask`` as for the decoder form): the encoder reads ``prefix + EOS``,
    the labels are ``suffix + EOS``, both padded to ``seq_len`` (pad id, ``IGNORE_INDEX``), and
    the decoder input is the labels shifted right behind the start id. Documents packed into
    a window stay together, as in T5.
    """

    name = "prefix_lm"
    families = ("encoder_decoder",)
    reports_bits_per_byte = False
    reports_accuracy = False

    def __init__(
        self,
        seq_len: int,
        eos_id: int,
        pad_id: int,
        decoder_start_id: int,
        noise_density: float = 0.5,
    ):
        if seq_len < 3:
            raise ValueError(f"train.seq_len must be >= 3 for the prefix LM, got {seq_len}")
        self.seq_len, self.noise_density = seq_len, noise_density
        self.targets_length = seq_len  # the decoder's length
        self.eos_id, self.pad_id, self.decoder_start_id = eos_id, pad_id, decoder_start_id

    def window_length(self, seq_len: int) -> int:
        """Raw tokens per example: one less than ``seq_len``, for the EOS of each side."""
        return seq_len - 1

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        what = f"prefix LM (seq_len {self.seq_len})"
        tokens = noised_windows(batch.tokens, generator, self.seq_len - 1, what)
        L = tokens.shape[1]
        eos = torch.tensor([self.eos_id], dtype=tokens.dtype)
        inputs, targets = [], []
        for row in tokens:
            split = random_prefix_length(L, self.noise_density, generator)
            inputs.append(torch.cat([row[:split], eos]))
            targets.append(torch.cat([row[split:], eos]))
        return encoder_decoder_batch(
            inputs,
            targets,
            pad_id=self.pad_id,
            decoder_start_id=self.decoder_start_id,
            objective=self.name,
            dtype=tokens.dtype,
            inputs_length=self.seq_len,
            targets_length=self.targets_length,
        )
