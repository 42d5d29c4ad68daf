"""BART denoising (Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for
Natural Language Generation, Translation, and Comprehension"; fairseq ``DenoisingDataset``).

Each packed window of ``seq_len - 2`` raw tokens is noised (:mod:`.bart_noise`) in fairseq's
order: sentence permutation, text infilling, then (extensions beyond fairseq's single masking
mode) token masking and token deletion, insertion, and document rotation. Every noise is off
at ratio 0. As fairseq does (``TokenBlockDataset(tokens_per_sample - 2)``, then ``<s>``
prepended and ``</s>`` appended), the encoder reads ``[BOS] noised [EOS]`` and the decoder
must produce ``[BOS] original [EOS]``, both ``seq_len`` long. The decoder input is that
target shifted right behind ``decoder_start_id`` (the pad id for this package's
encoder-decoder, as T5; fairseq and HF BART start with EOS).

Fixed shapes: infilling only shortens the text unless zero-length spans or insertions add
tokens, so the encoder input is right-padded with the pad id (masked as keys by the model) to
``seq_len``; when noise lengthens it past ``seq_len``, the noised text is cut at its end so
``[BOS] ... [EOS]`` is exactly ``seq_len`` long (fairseq has no length cap here).

Defaults are BART-large's (fairseq issue #1899, quoted in huggingface/transformers#18904):
``mask 0.3``, ``mask_random 0.1``, ``insert 0``, ``rotate 0``, ``permute_sentences 1.0``,
span-poisson over whole words with ``replace_length 1``. The Poisson rate is the paper's
lambda = 3 (§2.2); those BART-large args give 3.5 (mBART's value). The paper's large model is
pretrained with text infilling plus sentence permutation (abstract, §5.1), as the defaults do.
Secondary sources: ``shared/reference/objectives.md`` §4.

Sentence boundaries in token space: :func:`sentence_end_table` marks tokens whose text ends a
sentence; document-separating EOS tokens end one too (fairseq's full stop is the EOS id for
every BPE but GPT-2's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.bart_noise import (
    insert_tokens,
    permute_sentences,
    rotate,
    text_infilling,
    token_deletion,
    token_masking,
)
from pretrain.objectives.base import ModelBatch, encoder_decoder_batch, noised_windows
from pretrain.objectives.words import WordBoundaries

_SENTENCE_PUNCTUATION = (".", "!", "?", "…")
_CLOSERS = "\"'”’»)]"


def sentence_end_table(token_texts: Sequence[str]) -> torch.Tensor:
    """``(V,)`` bool from each token's decoded text: True if it contains a newline, or if, with
    trailing spaces and closing quotes or brackets removed, it ends in ``. ! ?`` or ``…``."""
    table = torch.zeros(len(token_texts), dtype=torch.bool)
    for i, text in enumerate(token_texts):
        stripped = text.rstrip(" \t").rstrip(_CLOSERS)
        table[i] = "\n" in text or stripped.endswith(_SENTENCE_PUNCTUATION)
    return table


class BARTDenoising:
    """BART's noising for encoder-decoder models; the target is always the original text."""

    name = "bart"
    families = ("encoder_decoder",)
    reports_bits_per_byte = False  # a language-modeling measure: next-token loss over bytes
    reports_accuracy = False  # share of label tokens predicted right (MLM accuracy)

    def __init__(
        self,
        seq_len: int,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        mask_id: int,
        decoder_start_id: int,
        special_ids: Sequence[int],
        vocab_size: int,
        words: WordBoundaries | None = None,
        sentence_ends: torch.Tensor | None = None,
        mask_ratio: float = 0.3,
        random_ratio: float = 0.1,
        poisson_lambda: float = 3.0,
        token_mask_ratio: float = 0.0,
        deletion_ratio: float = 0.0,
        insert_ratio: float = 0.0,
        permute_sentence_ratio: float = 1.0,
        rotate_ratio: float = 0.0,
    ):
        """``words``: where words begin (None: every token is a word); ``sentence_ends``:
        ``(V,)`` bool table (None: only EOS ends a sentence). Special ids are never hidden,
        masked or deleted, and random replacements are drawn from the other ids."""
        if seq_len < 4:
            raise ValueError(f"BART needs seq_len >= 4 (BOS, two tokens, EOS), got {seq_len}")
        self.seq_len = seq_len
        self.raw_length = seq_len - 2
        self.targets_length = seq_len  # the decoder's length: BOS, the original, EOS
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.mask_id, self.decoder_start_id = mask_id, decoder_start_id
        self.special = torch.zeros(vocab_size, dtype=torch.bool)
        self.special[list(special_ids)] = True
        self.random_ids = (~self.special).nonzero().squeeze(1)
        if words is None:  # every token a word
            ones = torch.ones(vocab_size, dtype=torch.bool)
            words = WordBoundaries(ones, torch.zeros_like(ones))
        self.words = words
        self.sentence_ends = torch.zeros(vocab_size, dtype=torch.bool)
        if sentence_ends is not None:
            self.sentence_ends |= sentence_ends
        self.sentence_ends[eos_id] = True
        self.mask_ratio = mask_ratio
        self.random_ratio = random_ratio
        self.poisson_lambda = poisson_lambda
        self.token_mask_ratio = token_mask_ratio
        self.deletion_ratio = deletion_ratio
        self.insert_ratio = insert_ratio
        self.permute_sentence_ratio = permute_sentence_ratio
        self.rotate_ratio = rotate_ratio

    def window_length(self, seq_len: int) -> int:
        """Raw tokens per example: ``seq_len - 2``, leaving room for BOS and EOS."""
        return self.raw_length

    def noise(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noised form of one window ``(L,)``, before BOS/EOS, padding and truncation."""
        x = tokens
        if self.permute_sentence_ratio > 0:
            x, _ = permute_sentences(
                x, self.sentence_ends[x], self.permute_sentence_ratio, generator
            )
        masks = (self.mask_id, self.random_ratio, self.random_ids, generator)
        if self.mask_ratio > 0:
            x = text_infilling(
                x,
                self.words.starts(x),
                ~self.special[x],
                self.mask_ratio,
                self.poisson_lambda,
                *masks,
            )
        if self.token_mask_ratio > 0:
            x = token_masking(x, ~self.special[x], self.token_mask_ratio, *masks)
        if self.deletion_ratio > 0:
            x = token_deletion(x, ~self.special[x], self.deletion_ratio, generator)
        if self.insert_ratio > 0:
            x = insert_tokens(x, math.ceil(len(x) * self.insert_ratio), *masks)
        if self.rotate_ratio > 0 and float(torch.rand(1, generator=generator)) < self.rotate_ratio:
            x = rotate(x, generator)
        return x

    def __call__(self, batch: TokenBatch, generator: torch.Generator | None = None) -> ModelBatch:
        what = f"BART (seq_len {self.seq_len})"
        tokens = noised_windows(batch.tokens, generator, self.raw_length, what)
        bos = torch.tensor([self.bos_id], dtype=tokens.dtype)
        eos = torch.tensor([self.eos_id], dtype=tokens.dtype)
        inputs = [
            torch.cat([bos, self.noise(row, generator)[: self.seq_len - 2], eos])  # cut additions
            for row in tokens
        ]
        targets = [torch.cat([bos, row, eos]) for row in tokens]  # seq_len each: the original
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
