"""Prompts with blanks, for models that fill them rather than continue text.

- Encoder-decoder models (T5, BART, UL2 on T5; Raffel et al. 2020, Lewis et al. 2020, Tay et
  al. 2022): the encoder input is laid out as the run's objective laid out training inputs:
  ``text [EOS]`` for span corruption and the prefix LM, ``[BOS] text [EOS]`` for BART, and
  ``[mode] text [EOS]`` for UL2, whose mode is R when the prompt holds sentinels (span
  filling) and S otherwise (continuation), unless ``--ul2-mode`` says.
- Encoders trained with masked LM (Devlin et al. 2019): the text, whose ``<|mask|>`` marks
  are predicted.

Blanks are written as the special tokens' own names: sentinels ``<|extra_id_0|>``,
``<|extra_id_1|>``, ... (span corruption, UL2's R and X), ``<|mask|>`` (masked LM, BART).
Only these are read as special tokens; any other text is encoded as ordinary text, as in the
training data. A space right before a blank is left out: in training, the byte-level BPE
token of the word a blank hides carries the space before it, so the model fills ``The
<|extra_id_0|> sat`` with `` cat`` and the space comes back with the word.
"""

from __future__ import annotations

import re

from pretrain.config import ExperimentConfig
from pretrain.prompting import check_ul2_mode, objective_names
from pretrain.tokenizer import MASK, SENTINELS, Tokenizer

BLANK_PATTERN = re.compile(" ?(" + "|".join(re.escape(t) for t in (*SENTINELS, MASK)) + ")")


def encode_with_blanks(text: str, tokenizer: Tokenizer) -> list[int]:
    """``text``'s token ids with each sentinel or mask mark as its special id."""
    ids: list[int] = []
    start = 0
    for match in BLANK_PATTERN.finditer(text):
        ids += tokenizer.encode(text[start : match.start()])
        ids.append(tokenizer.backend.token_to_id(match.group(1)))
        start = match.end()
    return ids + tokenizer.encode(text[start:])


def encoder_decoder_prompt_ids(
    text: str, tokenizer: Tokenizer, cfg: ExperimentConfig, ul2_mode: str | None = None
) -> tuple[list[int], str | None]:
    """The encoder input for ``text`` as the run's objectives trained it, and the UL2 mode
    token used (None if none).

    Raises:
        ValueError: a UL2 mode for a run that did not train UL2, or an unknown mode.
    """
    names = objective_names(cfg)
    special = tokenizer.special
    ids = encode_with_blanks(text, tokenizer)
    if ul2_mode is not None:
        check_ul2_mode(ul2_mode, names)
    elif "ul2" in names:
        ul2_mode = "R" if set(ids) & set(special.sentinels) else "S"
    if ul2_mode is not None:
        return [special.modes[f"[{ul2_mode}]"], *ids, special.eos], ul2_mode
    if names == {"bart"}:
        return [special.bos, *ids, special.eos], None
    return [*ids, special.eos], None
