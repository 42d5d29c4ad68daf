"""How a run's model reads a prompt and writes an answer after it, for scoring answers.

Laid out as the run's objective trained the model:

- a decoder reads the prompt as ``pretrain generate`` does (:mod:`pretrain.prompting`):
  causally, or as a bidirectional prefix for a prefix LM or UL2 (``[S]`` before it and EOS
  after), and the answer continues it;
- an encoder-decoder reads the prompt in its encoder (:mod:`pretrain.blank_prompts`) and its
  decoder writes the answer: directly for a prefix LM or UL2 (mode ``[S]``); after the
  sentinel of a blank put at the prompt's end for span corruption (Raffel et al. 2020: the
  targets are the sentinels each followed by the span it hides); after a copy of the prompt
  for BART, whose decoder rewrites its input with the blank filled (Lewis et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pretrain.blank_prompts import encoder_decoder_prompt_ids
from pretrain.config import ExperimentConfig
from pretrain.eval.choice_scoring import decoder_log_likelihoods, encoder_decoder_log_likelihoods
from pretrain.prompting import objective_names, prompt_ids, prompt_plan
from pretrain.tokenizer import Tokenizer

Requests = Sequence[tuple[str, Sequence[Sequence[int]]]]
"""(context, the token ids of each continuation to score after it)."""


class AnswerLayout:
    """Refuses encoder and XLNet runs: they write no answer (``ValueError``)."""

    def __init__(self, cfg: ExperimentConfig, tokenizer: Tokenizer):
        family = cfg.model.family
        if family not in ("decoder", "encoder_decoder"):
            raise ValueError(
                f"few-shot scoring needs a model that writes text (a decoder or an "
                f"encoder-decoder), this run is {family!r}; fine-tune it instead "
                "(pretrain finetune)"
            )
        self.family, self.tokenizer = family, tokenizer
        special = tokenizer.special
        self.decoder_prefix: Callable[[str], list[int]] = lambda context: []
        self.prefix = False
        """A decoder reads the context bidirectionally."""
        if family == "decoder":
            plan = prompt_plan(cfg)
            self.prefix = plan.prefix
            self.encode_context = lambda context: prompt_ids(context, tokenizer, plan)
            return
        names = objective_names(cfg)
        blank = ""
        if not names & {"prefix_lm", "ul2"} and "span" in names:
            blank = " <|extra_id_0|>"
            self.decoder_prefix = lambda context: [special.sentinels[0]]
        elif names == {"bart"}:
            blank = " <|mask|>"
            self.decoder_prefix = lambda context: [special.bos, *tokenizer.encode(context)]

        def encode(context: str) -> list[int]:
            return encoder_decoder_prompt_ids(context + blank, tokenizer, cfg)[0]

        self.encode_context: Callable[[str], list[int]] = encode

    def score(
        self, model: torch.nn.Module, requests: Requests, batch_size: int
    ) -> list[list[float]]:
        """The log-likelihood of each continuation of each request."""
        if self.family == "decoder":
            rows = [(self.encode_context(c), a) for c, answers in requests for a in answers]
            flat = decoder_log_likelihoods(model, rows, self.prefix, batch_size)
        else:
            rows3 = [
                (self.encode_context(c), self.decoder_prefix(c), a)
                for c, answers in requests
                for a in answers
            ]
            flat = encoder_decoder_log_likelihoods(model, rows3, batch_size)
        out, start = [], 0
        for _, answers in requests:
            out.append(flat[start : start + len(answers)])
            start += len(answers)
        return out
