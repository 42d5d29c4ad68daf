"""``pretrain fewshot``: in-context accuracy of a run's model on classification or
multiple-choice questions, no training.

Each question to evaluate gets K solved questions from a training file before it
(:mod:`pretrain.eval.few_shot_prompts`), and each of its choices is scored by its
log-likelihood as the continuation (:mod:`pretrain.eval.choice_scoring`); the questions come
from labeled or multiple-choice records (:mod:`pretrain.eval.few_shot_data`). Three
accuracies, as OLMo and lm-evaluation-harness report them:

- ``accuracy``: the choice with the highest log-likelihood;
- ``accuracy_per_char``: that log-likelihood divided by the choice's length in characters
  (lm-evaluation-harness's ``acc_norm``), so that a long choice does not lose for its length;
- ``accuracy_calibrated``: minus the choice's log-likelihood after the template's words alone
  (Holtzman et al. 2021, domain-conditional PMI), so that a choice does not win everywhere for
  being a common string.

The prompt is laid out as the run's objective trained the model
(:mod:`pretrain.eval.answer_layout`). A task is prepared once (its questions read, their
prompts drawn and fitted) and scored at any weights: by ``pretrain fewshot`` on a checkpoint,
and during training at each evaluation (``eval.tasks``), each rank scoring its share.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pretrain.config import FewShotTaskConfig
from pretrain.eval.answer_layout import AnswerLayout
from pretrain.eval.few_shot_data import (
    Question,
    answer_words,
    classification_questions,
    read_multiple_choice,
)
from pretrain.eval.few_shot_prompts import FewShotFormat, draw_demonstrations, fit_prompt
from pretrain.eval.labeled_data import read_labeled

METRICS = ("raw", "per_char", "calibrated")
"""How a choice is picked: log-likelihood, per character, minus the premise's."""
ACCURACY_KEYS = {
    "raw": "accuracy",
    "per_char": "accuracy_per_char",
    "calibrated": "accuracy_calibrated",
}
"""The name of each metric's accuracy in summaries and ``metrics.jsonl``."""


@dataclass(frozen=True)
class PreparedTask:
    """A task's questions with their prompts, ready to score at any weights."""

    task: FewShotTaskConfig
    fmt: FewShotFormat
    questions: list[Question]
    contexts: list[str]
    continuations: list[list[list[int]]]
    """Each question's choices as token ids, the separator before them included."""
    shots: list[int]
    truncated: list[bool]


def read_questions(task: FewShotTaskConfig) -> tuple[list[Question], list[Question]]:
    """(the questions to draw solved examples from, those to evaluate)."""
    if task.choices_key is not None:
        keys = (task.text_key, task.choices_key, task.label_key)
        return read_multiple_choice(task.train, *keys), read_multiple_choice(task.eval, *keys)
    keys = (task.text_key, task.label_key)
    pool = read_labeled(task.train, *keys)
    examples = read_labeled(task.eval, *keys, pool.label_names)
    words = answer_words(pool.label_names, task.answers)
    return classification_questions(pool, words), classification_questions(examples, words)


def prepare_task(task: FewShotTaskConfig, layout: AnswerLayout, seq_len: int) -> PreparedTask:
    """Read ``task``'s records and write each question's prompt within ``seq_len`` tokens.

    Raises:
        ValueError: a bad record (naming its file and line), or answer words that do not fit
            the labels.
    """
    fmt = FewShotFormat(task.template)
    pool, questions = read_questions(task)
    questions = questions[: task.max_examples]
    pool_texts = [q.text for q in pool]
    solved = [(q.text, q.choices[q.answer]) for q in pool]
    tokenizer = layout.tokenizer
    contexts, continuations, shots, truncated = [], [], [], []
    for i, question in enumerate(questions):
        answers = [tokenizer.encode(fmt.continuation(c)) for c in question.choices]
        drawn = draw_demonstrations(pool_texts, task.shots, task.seed, i, question.text)
        fitted = fit_prompt(
            fmt,
            [solved[j] for j in drawn],
            question.text,
            layout.encode_context,
            tokenizer.encode,
            tokenizer.decode,
            seq_len - max(map(len, answers)),
        )
        contexts.append(fitted.context)
        continuations.append(answers)
        shots.append(fitted.shots)
        truncated.append(fitted.truncated)
    return PreparedTask(task, fmt, questions, contexts, continuations, shots, truncated)


def score_task(
    prepared: PreparedTask,
    layout: AnswerLayout,
    model: torch.nn.Module,
    batch_size: int,
    indices: Sequence[int] | None = None,
) -> tuple[list[list[float]], list[list[float]]]:
    """(each question's choices' log-likelihoods after its prompt, and after the premise
    alone), for the questions at ``indices`` (None: all)."""
    if indices is None:
        indices = range(len(prepared.questions))
    requests = [(prepared.contexts[i], prepared.continuations[i]) for i in indices]
    # The premise is scored once per set of choices: once for a classification.
    distinct: dict[tuple[str, ...], int] = {}
    premise_requests = []
    for i in indices:
        choices = prepared.questions[i].choices
        if choices not in distinct:
            distinct[choices] = len(premise_requests)
            premise_requests.append((prepared.fmt.premise(), prepared.continuations[i]))
    scores = layout.score(model, requests, batch_size)
    alone = layout.score(model, premise_requests, batch_size)
    return scores, [alone[distinct[prepared.questions[i].choices]] for i in indices]


def picks(question: Question, scores: list[float], premise: list[float]) -> dict[str, int]:
    """The choice each metric picks (:data:`METRICS`)."""
    lengths = [len(c) for c in question.choices]
    return {
        "raw": _argmax(scores),
        "per_char": _argmax([s / n for s, n in zip(scores, lengths, strict=True)]),
        "calibrated": _argmax([s - p for s, p in zip(scores, premise, strict=True)]),
    }


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def few_shot_eval(
    run_dir: str | os.PathLike,
    task: FewShotTaskConfig,
    checkpoint: str = "latest",
    batch_size: int = 16,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score every question of ``task`` with a run's checkpoint; returns the summary and,
    under ``predictions``, one record per question (its answer, each choice's
    log-likelihood, the shots it got).

    Raises:
        ValueError: an encoder or XLNet run, a bad record (naming file and line), answer words
            that do not fit the labels.
    """
    from pretrain.runs import load_run
    from pretrain.train.device_setup import resolve_device

    run = load_run(run_dir, checkpoint, device=str(resolve_device(device)))
    try:
        layout = AnswerLayout(run.config, run.tokenizer)
    except ValueError as e:
        raise ValueError(f"{run_dir}: {e}") from None
    prepared = prepare_task(task.validate("task"), layout, run.config.train.seq_len)
    scores, premise = score_task(prepared, layout, run.model, batch_size)
    summary = summarize(prepared, scores, premise)
    return {"run": str(run.run_dir), "checkpoint": str(run.checkpoint), **summary}


def summarize(
    prepared: PreparedTask, scores: list[list[float]], premise: list[list[float]]
) -> dict[str, Any]:
    """Accuracies, answers given, and each question's record, of a fully scored task."""
    questions = prepared.questions
    # Answers given are counted by word where every question has the same choices (a
    # classification), else by index.
    shared = len({q.choices for q in questions}) == 1
    counts = {metric: Counter() for metric in METRICS}
    correct = Counter()
    predictions = []
    for i, (question, row, alone) in enumerate(zip(questions, scores, premise, strict=True)):
        chosen = picks(question, row, alone)
        for metric, c in chosen.items():
            counts[metric][question.choices[c] if shared else str(c)] += 1
            correct[metric] += c == question.answer
        predictions.append(
            {
                "index": i,
                "answer": question.answer,
                "choices": list(question.choices),
                "log_likelihoods": row,
                "premise_log_likelihoods": alone,
                "prediction": chosen["raw"],
                "shots": prepared.shots[i],
                "truncated": prepared.truncated[i],
            }
        )
    n = len(questions)
    first = questions[0]
    task = prepared.task
    return {
        "examples": n,
        "shots": task.shots,
        "mean_shots": sum(prepared.shots) / n,
        "fewer_shots": sum(s < task.shots for s in prepared.shots),
        "truncated": sum(prepared.truncated),
        **{ACCURACY_KEYS[metric]: correct[metric] / n for metric in METRICS},
        "majority_accuracy": max(Counter(q.answer for q in questions).values()) / n,
        "chance_accuracy": sum(1 / len(q.choices) for q in questions) / n,
        "predicted": {metric: dict(c) for metric, c in counts.items()},
        "choices": list(first.choices) if shared else None,
        "template": task.template,
        "seed": task.seed,
        "first_prompt": prepared.contexts[0]
        + prepared.fmt.continuation(first.choices[first.answer]),
        "predictions": predictions,
    }
