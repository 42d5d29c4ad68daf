"""UL2 Mixture-of-Denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms",
arXiv 2205.05131, §3.1), for encoder-decoder and decoder-only models.

Each example draws its denoiser from the rates (:mod:`.ul2_denoisers`) with the trainer's
generator, so a batch mixes denoisers and the draw is reproducible. R and X denoisers are T5
span corruption with their own mean span and rate (:func:`~.noise.random_spans_noise_mask`,
one sentinel per span, ``<|extra_id_0|>`` first); S is T5's prefix LM
(:func:`~.noise.random_prefix_length`). Inputs are ``[mode] inputs [EOS]`` and targets
``targets [EOS]``, as T5 appends EOS to both (``append_eos_after_trim``), with the paradigm's
mode token (``[R]``, ``[X]``, ``[S]``) first (§3.1.2; U-PaLM §2.3 prepends it the same way).

- encoder-decoder: inputs to the encoder, right-padded with the pad id to ``seq_len``;
  targets are the labels, padded with ``IGNORE_INDEX`` to a fixed decoder length (the longest
  target any active denoiser can make); the decoder input is the targets shifted right behind
  ``decoder_start_id``, padded with the pad id.
- decoder: the sequence ``[mode] inputs [EOS] targets [EOS]``, right-padded with the pad id to
  ``seq_len + 1`` tokens, becomes a prefix-LM example exactly as :mod:`.prefix_lm` builds one
  (seqio's ``PrefixLMFeatureConverter``): bidirectional attention over the ``1 + len(inputs)``
  prefix, a loss only where the next token is a target, none on the padding.

Fixed shapes, filled: each denoiser takes the longest window whose worst-case example fits
``seq_len`` (and the decoder length), the first tokens of the loader's window, which is the
longest of them (:func:`~.ul2_denoisers.plan_ul2`). Shorter examples are padded. Corruption
moves tokens, so attention is not restricted to documents (as in :mod:`.span`).

Per-example record: ``batch.task_ids[b]`` indexes ``batch.task_names`` (the denoiser names,
:attr:`UL2.denoiser_names`), so the trainer reports the loss per denoiser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.base import (
    IGNORE_INDEX,
    ModelBatch,
    encoder_decoder_batch,
    noised_windows,
)
from pretrain.objectives.noise import random_prefix_length, span_corrupt
from pretrain.objectives.prefix_lm import prefix_lm_batch
from pretrain.objectives.ul2_denoisers import UL2_DENOISERS, Denoiser, plan_ul2


class UL2:
    """UL2's mixture of R, X and S denoisers with mode tokens."""

    name = "ul2"
    families = ("decoder", "encoder_decoder")
    reports_bits_per_byte = False  # a language-modeling measure: next-token loss over bytes
    reports_accuracy = False  # share of label tokens predicted right (MLM accuracy)

    def __init__(
        self,
        seq_len: int,
        family: str,
        *,
        mode_ids: Mapping[str, int],
        sentinel_ids: Sequence[int],
        eos_id: int,
        pad_id: int,
        decoder_start_id: int,
        denoisers: Sequence[Denoiser] = UL2_DENOISERS,
        rates: Sequence[float] | None = None,
    ):
        if family not in self.families:
            raise ValueError(f"UL2 builds batches for {list(self.families)}, not {family!r}")
        rates = [1.0] * len(denoisers) if rates is None else list(rates)
        self.plan = plan_ul2(denoisers, rates, seq_len, family, len(sentinel_ids))
        self.seq_len = seq_len
        self.family = family
        self.denoisers = tuple(denoisers)
        self.denoiser_names = tuple(d.name for d in denoisers)
        self.rates = torch.tensor(rates, dtype=torch.float64) / sum(rates)
        self.raw_lengths = self.plan.raw_lengths  # per denoiser
        self.raw_length = self.plan.window_length
        self.targets_length = self.plan.targets_length
        self.mode_ids = {d.mode: mode_ids[d.mode] for d in denoisers}
        self.sentinel_ids = list(sentinel_ids)
        self.eos_id, self.pad_id, self.decoder_start_id = eos_id, pad_id, decoder_start_id

    def window_length(self, seq_len: int) -> int:
        """Raw tokens per example the loader must provide: the longest denoiser's window
        (see :func:`plan_ul2`)."""
        return self.raw_length

    def corrupt(
        self, tokens: torch.Tensor, denoiser: Denoiser, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``([mode] inputs [EOS], targets [EOS])`` for one window ``(L,)``."""
        if denoiser.mean_span is None:
            split = random_prefix_length(len(tokens), denoiser.density, generator)
            inputs, targets = tokens[:split], tokens[split:]
        else:
            inputs, targets = span_corrupt(
                tokens, denoiser.density, denoiser.mean_span, self.sentinel_ids, generator
            )
        mode = torch.tensor([self.mode_ids[denoiser.mode]], dtype=tokens.dtype)
        eos = torch.tensor([self.eos_id], dtype=tokens.dtype)
        return torch.cat([mode, inputs, eos]), torch.cat([targets, eos])

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        what = f"UL2 (seq_len {self.seq_len}, {self.family})"
        tokens = noised_windows(batch.tokens, generator, self.raw_length, what)
        ids = torch.multinomial(self.rates, len(tokens), replacement=True, generator=generator)
        pairs = [
            self.corrupt(row[: self.raw_lengths[i]], self.denoisers[i], generator)
            for row, i in zip(tokens, ids.tolist(), strict=True)
        ]
        if self.family == "decoder":
            return self._decoder_batch(pairs, ids, tokens.dtype)
        return self._encoder_decoder_batch(pairs, ids, tokens.dtype)

    def _encoder_decoder_batch(
        self, pairs: list[tuple[torch.Tensor, torch.Tensor]], ids: torch.Tensor, dtype
    ) -> ModelBatch:
        return encoder_decoder_batch(
            [inputs for inputs, _ in pairs],
            [targets for _, targets in pairs],
            pad_id=self.pad_id,
            decoder_start_id=self.decoder_start_id,
            objective=self.name,
            dtype=dtype,
            inputs_length=self.seq_len,
            targets_length=self.targets_length,
            task_ids=ids,
            task_names=self.denoiser_names,
        )

    def _decoder_batch(
        self, pairs: list[tuple[torch.Tensor, torch.Tensor]], ids: torch.Tensor, dtype
    ) -> ModelBatch:
        B = len(pairs)
        sequences = torch.full((B, self.seq_len + 1), self.pad_id, dtype=dtype)
        prefix_lengths = torch.tensor([len(inputs) for inputs, _ in pairs], dtype=torch.long)
        lengths = torch.tensor([len(i) + len(t) for i, t in pairs], dtype=torch.long)
        for b, (inputs, targets) in enumerate(pairs):
            sequences[b, : lengths[b]] = torch.cat([inputs, targets])
        base = prefix_lm_batch(sequences, prefix_lengths, None, self.name)
        predicts_real = torch.arange(self.seq_len)[None, :] + 1 < lengths[:, None]
        return ModelBatch(
            input_ids=base.input_ids,
            labels=base.labels.masked_fill(~predicts_real, IGNORE_INDEX),
            attention=base.attention,
            objective=self.name,
            task_ids=ids,
            task_names=self.denoiser_names,
        )
