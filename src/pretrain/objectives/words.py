"""Where words begin in a sequence of byte-level BPE tokens (whole-word masking, BART).

A word is a stretch of text between whitespace, as in Hugging Face's whole-word masking
(transformers v5 ``DataCollatorForLanguageModeling._calc_word_ids_and_prob_mask``: a new word
starts at a token whose start offset differs from the previous token's end offset, which with
byte-level offsets trimmed of whitespace happens where whitespace separates them, or after a
special token). So a token starts a word when

* its text begins with whitespace (``" the"``, ``"\\n"``), or
* the token before it ends with whitespace (``"Then"`` after a ``"\\n"`` token), or
* it is the first of its row (callers also start a word after a special token).

Everything else continues a word, including the pieces of one character that the byte-level
vocabulary splits over several tokens (``"naïve"``) and punctuation written against a word
(``"end."``, ``"wait—what"``). The first rule alone (fairseq's ``is_beginning_of_word``, a
leading space) would glue the first word of every line to the newline before it.

A token's own text is not enough to decide, only with its neighbour: hence two per-vocabulary
tables and :meth:`WordBoundaries.starts` over a sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class WordBoundaries:
    """Per-vocabulary ``opens`` (text begins with whitespace) and ``closes`` (text ends with
    whitespace) tables, ``(V,)`` bool each."""

    def __init__(self, opens: torch.Tensor, closes: torch.Tensor) -> None:
        if opens.shape != closes.shape or opens.dim() != 1:
            raise ValueError("opens and closes must be (V,) tables of one size")
        self.opens = opens.bool()
        self.closes = closes.bool()

    @classmethod
    def from_token_texts(cls, token_texts: Sequence[str]) -> WordBoundaries:
        """From each id's decoded text (``tokenizer.decode([id])``). A byte-level token that
        holds part of a multi-byte character decodes to a replacement character, never to
        whitespace, so it never opens or closes a word."""
        opens = torch.tensor([t[:1].isspace() for t in token_texts], dtype=torch.bool)
        closes = torch.tensor([t[-1:].isspace() for t in token_texts], dtype=torch.bool)
        return cls(opens, closes)

    def starts(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., T)`` bool for ``tokens`` ``(..., T)``: True where a token starts a word."""
        starts = self.opens[tokens]
        starts[..., 1:] |= self.closes[tokens[..., :-1]]
        if tokens.shape[-1]:
            starts[..., 0] = True
        return starts
