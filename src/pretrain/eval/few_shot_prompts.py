"""Few-shot prompts: K solved examples, then the one to answer.

In-context evaluation as GPT-3 did it (Brown et al. 2020, "Language Models are Few-Shot
Learners", §2.4): for each example to evaluate, K examples drawn at random from the task's
training set are written before it with their answers, and each possible answer is scored by
the likelihood the model gives it as the continuation. The layout follows EleutherAI's
lm-evaluation-harness: an example is a template filled with its text, the answer follows
after a space, and examples are separated by a blank line.

K is as many as fit: when the demonstrations and the example exceed the model's context, the
demonstrations farthest from the example are dropped first (GPT-3 likewise took as many as
its context window holds); an example too long by itself keeps its last tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FewShotFormat:
    """How examples are written.

    Attributes:
        template: an example's text around ``{text}``; the answer follows it.
        answer_separator: between the template and the answer (the answer's first token
            carries it, as byte-level BPE tokens carry the space before a word).
        example_separator: between examples.
    """

    template: str
    answer_separator: str = " "
    example_separator: str = "\n\n"

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise ValueError(f"the template must hold {{text}}, got {self.template!r}")

    def question(self, text: str) -> str:
        return self.template.replace("{text}", text)

    def continuation(self, answer: str) -> str:
        """What follows the question when the answer is ``answer``."""
        return self.answer_separator + answer

    def context(self, demonstrations: Sequence[tuple[str, str]], text: str) -> str:
        """The solved ``demonstrations`` (text, answer), then ``text``'s question."""
        solved = [self.question(t) + self.continuation(answer) for t, answer in demonstrations]
        return self.example_separator.join([*solved, self.question(text)])

    def premise(self) -> str:
        """The template's words after the text (``Answer:``): the domain premise of
        calibrated scoring, which weighs each answer by how likely it is without the text
        (Holtzman et al. 2021, "Surface Form Competition", domain-conditional PMI)."""
        return self.template.split("{text}")[-1].strip() or self.template.replace("{text}", "")


def draw_demonstrations(
    pool_texts: Sequence[str], shots: int, seed: int, index: int, exclude_text: str
) -> list[int]:
    """``shots`` distinct indices into the pool for evaluation example ``index``, drawn at
    random (a generator seeded by ``seed`` and ``index``, so each example's draw is the same
    however many are evaluated), none of whose texts is the example's own."""
    candidates = range(len(pool_texts))
    rng = random.Random(f"{seed}:{index}")
    # A few spare in case the example itself is in the pool (the pool is not scanned: it may
    # be large and the draws many).
    drawn = rng.sample(candidates, min(len(pool_texts), shots + 2))
    kept = [i for i in drawn if pool_texts[i] != exclude_text]
    if len(kept) < shots and len(drawn) < len(pool_texts):
        # The example's text is in the pool more often than the spares cover: draw again
        # from the texts that differ from it.
        eligible = [i for i in candidates if pool_texts[i] != exclude_text]
        kept = rng.sample(eligible, min(shots, len(eligible)))
    return kept[:shots]


@dataclass(frozen=True)
class FittedPrompt:
    context: str
    context_ids: list[int]
    shots: int
    """The demonstrations kept."""
    truncated: bool
    """The example's own text lost its first tokens to fit."""


def fit_prompt(
    fmt: FewShotFormat,
    demonstrations: Sequence[tuple[str, str]],
    text: str,
    encode_context: Callable[[str], list[int]],
    tokenize_text: Callable[[str], list[int]],
    detokenize: Callable[[list[int]], str],
    max_context_tokens: int,
) -> FittedPrompt:
    """The context's token ids within ``max_context_tokens``.

    Args:
        encode_context: a context string to the ids the model reads (the run's layout).
        tokenize_text, detokenize: plain text to ids and back, to cut an example's text.

    Raises:
        ValueError: even an empty example text does not fit.
    """
    for shots in range(len(demonstrations), -1, -1):
        context = fmt.context(demonstrations[len(demonstrations) - shots :], text)
        ids = encode_context(context)
        if len(ids) <= max_context_tokens:
            return FittedPrompt(context, ids, shots, truncated=False)
    text_ids = tokenize_text(text)
    keep = len(text_ids) - (len(ids) - max_context_tokens)
    while keep > 0:
        context = fmt.context([], detokenize(text_ids[-keep:]))
        ids = encode_context(context)
        if len(ids) <= max_context_tokens:
            return FittedPrompt(context, ids, 0, truncated=True)
        keep -= len(ids) - max_context_tokens
    context = fmt.context([], "")
    ids = encode_context(context)
    if len(ids) > max_context_tokens:
        raise ValueError(
            f"the template alone takes {len(ids)} tokens, more than the {max_context_tokens} "
            "the model reads before an answer"
        )
    return FittedPrompt(context, ids, 0, truncated=True)
