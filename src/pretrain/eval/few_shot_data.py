"""What few-shot evaluation scores: questions, each with its possible answers and the right one.

Two kinds of records become questions:

- classification, ``{"text": ..., "label": ...}`` (:mod:`pretrain.eval.labeled_data`): every
  question has the same answers, one word per label (``--answer 0=negative 1=positive``);
- multiple choice, ``{"text": ..., "choices": [...], "label": i}``: each question has its own
  answers and ``label`` is the index of the right one, as in the multiple-choice tasks
  lm-evaluation-harness and OLMo evaluate (HellaSwag's endings, PIQA's solutions, ARC's
  options), written out as JSON Lines.

Files are read like pretraining documents, and a record that is not a question stops the
read with an error naming its file and line: an accuracy over an unknown part of the data
means little.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from pretrain.data.readers import ReadReport, iter_documents, no_documents_error
from pretrain.eval.labeled_data import Label, LabeledExamples


@dataclass(frozen=True)
class Question:
    text: str
    choices: tuple[str, ...]
    answer: int
    """Index of the right one in :attr:`choices`."""


def answer_words(labels: Sequence[Label], answers: dict[str, str] | None) -> tuple[str, ...]:
    """The answer word of each label (keyed by the label as written: ``"1"`` for 1).

    Raises:
        ValueError: a label without a word, a word for a label the data does not have, or
            two labels with one word.
    """
    if answers is None:
        return tuple(str(label) for label in labels)
    written = [str(label) for label in labels]
    missing = [label for label in written if label not in answers]
    unknown = sorted(set(answers) - set(written))
    if missing or unknown:
        raise ValueError(
            f"--answer: give one word for each label of the data ({', '.join(written)}); "
            + (f"missing: {', '.join(missing)}" if missing else f"no such label: {unknown}")
        )
    words = tuple(answers[label] for label in written)
    if len(set(words)) != len(words):
        raise ValueError(f"--answer: two labels have the same answer word: {list(words)}")
    return words


def classification_questions(examples: LabeledExamples, words: Sequence[str]) -> list[Question]:
    """One question per example; its answers ``words``, one per label."""
    choices = tuple(words)
    return [Question(t, choices, y) for t, y in zip(examples.texts, examples.labels, strict=True)]


def read_multiple_choice(
    inputs: Sequence[str | os.PathLike],
    text_key: str = "text",
    choices_key: str = "choices",
    label_key: str = "label",
) -> list[Question]:
    """Every multiple-choice record of ``inputs``.

    Raises:
        ValueError: naming the record (file and line, or its id): no text, no list of at least
            two non-empty strings under ``choices_key``, or a label that is not an index into
            it; or no record at all.
    """
    report = ReadReport(strict=True)
    questions = []
    for doc in iter_documents(inputs, report, text_field=text_key):
        where = doc["id"]
        choices = doc.get(choices_key)
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise ValueError(
                f"{where}: {choices_key!r} must be a list of at least two non-empty strings, "
                f"got {choices!r}"
            )
        label = doc.get(label_key)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise ValueError(
                f"{where}: {label_key!r} must be the index of the right choice (0 to "
                f"{len(choices) - 1}), got {label!r}"
            )
        questions.append(Question(doc["text"], tuple(choices), label))
    if not questions:
        raise no_documents_error(inputs, report)
    return questions
