"""``pretrain fewshot``: in-context classification accuracy of a run's model, no training.

Each example to evaluate gets K solved examples from a training file before it
(:mod:`pretrain.eval.few_shot_prompts`), and each label's answer word is scored by its
log-likelihood as the continuation (:mod:`pretrain.eval.choice_scoring`). Three accuracies,
as OLMo and lm-evaluation-harness report them:

- ``accuracy``: the answer with the highest log-likelihood;
- ``accuracy_per_char``: that log-likelihood divided by the answer's length in characters
  (lm-evaluation-harness's ``acc_norm``), which stops short answers winning for being short;
- ``accuracy_calibrated``: minus the answer's log-likelihood after the template's words alone
  (Holtzman et al. 2021, domain-conditional PMI), which stops one answer winning everywhere
  for being the more common word; a small model's few-shot errors are mostly that bias.

The prompt is laid out as the run's objective trained the model: a decoder reads it as
``pretrain generate`` would (causally, or as a bidirectional prefix for a prefix LM or UL2);
an encoder-decoder reads it in its encoder and its decoder writes the answer: directly after
a prefix LM or UL2 (mode ``[S]``), after the sentinel of a blank put at the prompt's end for
span corruption, and after a copy of the prompt for BART, whose decoder rewrites its input.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pretrain.eval.choice_scoring import decoder_log_likelihoods, encoder_decoder_log_likelihoods
from pretrain.eval.few_shot_prompts import FewShotFormat, draw_demonstrations, fit_prompt
from pretrain.eval.labeled_data import Label, LabeledExamples, read_labeled
from pretrain.runs import LoadedRun, load_run
from pretrain.train.device_setup import resolve_device

DEFAULT_TEMPLATE = "{text}\nAnswer:"


@dataclass(frozen=True)
class FewShotSettings:
    shots: int = 5
    template: str = DEFAULT_TEMPLATE
    answers: dict[str, str] | None = None
    """The answer word of each label, keyed by the label as written (``"1"``); None: the
    labels themselves."""
    seed: int = 0
    max_examples: int | None = None
    """Evaluate the first N examples only."""
    batch_size: int = 16
    text_key: str = "text"
    label_key: str = "label"
    device: str = "cpu"


def few_shot_eval(
    run_dir: str | os.PathLike,
    train_inputs: Sequence[str | os.PathLike],
    eval_inputs: Sequence[str | os.PathLike],
    settings: FewShotSettings,
    checkpoint: str = "latest",
) -> dict[str, Any]:
    """Score every evaluation example; returns the summary and, under ``predictions``, one
    record per example (its label, each answer's log-likelihood, the shots it got).

    Raises:
        ValueError: an encoder or XLNet run, bad examples (naming file and line), a label
            without an answer word or an answer word for no label.
    """
    device = resolve_device(settings.device)
    run = load_run(run_dir, checkpoint, device=str(device))
    family = run.config.model.family
    if family not in ("decoder", "encoder_decoder"):
        raise ValueError(
            f"{run_dir}: few-shot scoring needs a model that writes text (a decoder or an "
            f"encoder-decoder), this run is {family!r}; fine-tune it instead (pretrain finetune)"
        )
    pool = read_labeled(train_inputs, settings.text_key, settings.label_key)
    examples = read_labeled(eval_inputs, settings.text_key, settings.label_key, pool.label_names)
    if settings.max_examples is not None:
        n = settings.max_examples
        examples = LabeledExamples(examples.texts[:n], examples.labels[:n], pool.label_names)
    fmt = FewShotFormat(settings.template, answer_words(pool.label_names, settings.answers))
    layout = _Layout(run)
    continuations = [layout.tokenizer.encode(fmt.continuation(c)) for c in range(len(fmt.answers))]
    budget = run.config.train.seq_len - max(map(len, continuations))

    contexts, shots, truncated = [], [], []
    for i, (text, _) in enumerate(zip(examples.texts, examples.labels, strict=True)):
        drawn = draw_demonstrations(pool.texts, settings.shots, settings.seed, i, text)
        demonstrations = [(pool.texts[j], pool.labels[j]) for j in drawn]
        fitted = fit_prompt(
            fmt,
            demonstrations,
            text,
            layout.encode_context,
            layout.tokenizer.encode,
            layout.tokenizer.decode,
            budget,
        )
        contexts.append(fitted.context)
        shots.append(fitted.shots)
        truncated.append(fitted.truncated)
    scores = layout.score(contexts, continuations, settings.batch_size)
    premise = layout.score([fmt.premise()], continuations, settings.batch_size)[0]
    return _summary(run, examples, fmt, scores, premise, shots, truncated, contexts, settings)


def answer_words(labels: Sequence[Label], answers: dict[str, str] | None) -> tuple[str, ...]:
    """The answer word of each label (keyed by the label as written: ``"1"`` for 1).

    Raises:
        ValueError: a label without a word, or a word for a label the data does not have.
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
    return tuple(answers[label] for label in written)


class _Layout:
    """The run's model and how it reads a context and writes an answer."""

    def __init__(self, run: LoadedRun):
        from pretrain.blank_prompts import encoder_decoder_prompt_ids
        from pretrain.prompting import objective_names, prompt_ids, prompt_plan

        self.run, self.tokenizer = run, run.tokenizer
        special = self.tokenizer.special
        self.decoder_prefix: Callable[[str], list[int]] = lambda context: []
        self.prefix = False  # a decoder's context read bidirectionally
        if run.config.model.family == "decoder":
            plan = prompt_plan(run.config)
            self.prefix = plan.prefix
            self.encode_context = lambda context: prompt_ids(context, self.tokenizer, plan)
            return
        names = objective_names(run.config)
        blank = ""
        if not names & {"prefix_lm", "ul2"} and "span" in names:
            blank = " <|extra_id_0|>"  # the answer fills a blank at the end
            self.decoder_prefix = lambda context: [special.sentinels[0]]
        elif names == {"bart"}:
            blank = " <|mask|>"  # the decoder rewrites the prompt, the answer in the blank
            self.decoder_prefix = lambda context: [special.bos, *self.tokenizer.encode(context)]

        def encode(context: str) -> list[int]:
            return encoder_decoder_prompt_ids(context + blank, self.tokenizer, run.config)[0]

        self.encode_context = encode

    def score(
        self, contexts: Sequence[str], continuations: Sequence[list[int]], batch_size: int
    ) -> list[list[float]]:
        """Each context's log-likelihood of each continuation."""
        n = len(continuations)
        if self.run.config.model.family == "decoder":
            requests = [(self.encode_context(c), cont) for c in contexts for cont in continuations]
            flat = decoder_log_likelihoods(self.run.model, requests, self.prefix, batch_size)
        else:
            enc_requests = [
                (self.encode_context(c), self.decoder_prefix(c), cont)
                for c in contexts
                for cont in continuations
            ]
            flat = encoder_decoder_log_likelihoods(self.run.model, enc_requests, batch_size)
        return [flat[i : i + n] for i in range(0, len(flat), n)]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _summary(
    run: LoadedRun,
    examples: LabeledExamples,
    fmt: FewShotFormat,
    scores: list[list[float]],
    premise: list[float],
    shots: list[int],
    truncated: list[bool],
    contexts: list[str],
    settings: FewShotSettings,
) -> dict[str, Any]:
    lengths = [len(a) for a in fmt.answers]
    predictions, counts = [], {"raw": Counter(), "per_char": Counter(), "calibrated": Counter()}
    correct = Counter()
    for i, (label, row) in enumerate(zip(examples.labels, scores, strict=True)):
        chosen = {
            "raw": _argmax(row),
            "per_char": _argmax([s / n for s, n in zip(row, lengths, strict=True)]),
            "calibrated": _argmax([s - p for s, p in zip(row, premise, strict=True)]),
        }
        for metric, c in chosen.items():
            counts[metric][fmt.answers[c]] += 1
            correct[metric] += c == label
        predictions.append(
            {
                "index": i,
                "label": examples.label_names[label],
                "answer": fmt.answers[label],
                "log_likelihoods": dict(zip(fmt.answers, row, strict=True)),
                "prediction": fmt.answers[chosen["raw"]],
                "shots": shots[i],
                "truncated": truncated[i],
            }
        )
    n = len(examples.labels)
    return {
        "run": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "examples": n,
        "shots": settings.shots,
        "mean_shots": sum(shots) / n,
        "fewer_shots": sum(s < settings.shots for s in shots),
        "truncated": sum(truncated),
        "accuracy": correct["raw"] / n,
        "accuracy_per_char": correct["per_char"] / n,
        "accuracy_calibrated": correct["calibrated"] / n,
        "majority_accuracy": max(Counter(examples.labels).values()) / n,
        "chance_accuracy": 1 / len(fmt.answers),
        "predicted": {metric: dict(c) for metric, c in counts.items()},
        "answers": dict(zip(map(str, examples.label_names), fmt.answers, strict=True)),
        "premise_log_likelihoods": dict(zip(fmt.answers, premise, strict=True)),
        "template": fmt.template,
        "seed": settings.seed,
        "first_prompt": contexts[0] + fmt.continuation(examples.labels[0]),
        "predictions": predictions,
    }
