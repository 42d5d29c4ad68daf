"""T5 span corruption (Raffel et al. 2020, §3.1.4; ``t5.data.preprocessors.span_corruption``).

Each example is a window of ``raw_length`` packed tokens, chosen so that after corruption the
encoder input is exactly ``seq_len`` tokens (568 raw tokens -> 512 inputs and 114 targets at
noise density 0.15 and mean span 3; :func:`~.noise.span_corruption_lengths`). Noise spans are
drawn anew for every example (:func:`~.noise.random_spans_noise_mask`), each replaced in the
input by one sentinel (``<|extra_id_0|>``, ``<|extra_id_1|>``, ...), and the targets list each
sentinel followed by the tokens it hid; both end with EOS. The decoder input is the targets
shifted right behind a start token (T5 uses the pad id).

At noise density 0.5, T5's "minor hack" (:func:`~.noise.span_corruption_lengths`) takes one
raw token fewer when the targets would outgrow the inputs, and for some ``seq_len`` the
corrupted input then comes out one token short; as T5 does, it is right-padded with the pad
id, which the encoder masks as a key.

Packed windows keep the EOS between documents (as nanoT5 does; original T5 concatenated
documents without a separator). Attention is not restricted to documents: corruption moves
positions, and T5 did not either.
"""

from __future__ import annotations

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import ModelBatch, encoder_decoder_batch, noised_windows
from pretrain.objectives.noise import (
    check_sentinels,
    corrupted_lengths,
    span_corrupt,
    span_corruption_lengths,
)


class SpanCorruption:
    """T5's span corruption for encoder-decoder models."""

    name = "span"
    families = ("encoder_decoder",)
    reports_bits_per_byte = False  # a language-modeling measure: next-token loss over bytes
    reports_accuracy = False  # share of label tokens predicted right (MLM accuracy)

    def __init__(
        self,
        seq_len: int,
        sentinel_ids: list[int],
        eos_id: int,
        decoder_start_id: int,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        pad_id: int | None = None,
    ):
        self.seq_len = seq_len
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.raw_length, self.targets_length = span_corruption_lengths(
            seq_len, noise_density, mean_noise_span_length
        )
        check_sentinels(self.raw_length, noise_density, mean_noise_span_length, len(sentinel_ids))
        inputs_length, _ = corrupted_lengths(self.raw_length, noise_density, mean_noise_span_length)
        if inputs_length < seq_len and pad_id is None:
            raise ValueError(
                f"span corruption at seq_len {seq_len} and noise density {noise_density} gives "
                f"{inputs_length} input tokens: padding them to {seq_len} needs a pad_id"
            )
        self.pad_id = pad_id
        self.sentinel_ids = sentinel_ids
        self.eos_id = eos_id
        self.decoder_start_id = decoder_start_id

    def window_length(self, seq_len: int) -> int:
        """Raw tokens per example the loader must provide (T+1 for the other objectives)."""
        return self.raw_length

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        what = f"span corruption (seq_len {self.seq_len})"
        tokens = noised_windows(batch.tokens, generator, self.raw_length, what)
        eos = torch.tensor([self.eos_id], dtype=tokens.dtype)
        inputs, targets = [], []
        for row in tokens:
            noised, hidden = span_corrupt(
                row, self.noise_density, self.mean_noise_span_length, self.sentinel_ids, generator
            )
            inputs.append(torch.cat([noised, eos]))
            targets.append(torch.cat([hidden, eos]))
        # Every row corrupts to the same lengths: seq_len inputs (or one fewer, padded) and
        # targets_length targets.
        return encoder_decoder_batch(
            inputs,
            targets,
            pad_id=self.pad_id,
            inputs_length=self.seq_len,
            decoder_start_id=self.decoder_start_id,
            objective=self.name,
            dtype=tokens.dtype,
        )
