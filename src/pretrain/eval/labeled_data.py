"""Labeled examples for fine-tuning a classifier: ``{"text": ..., "label": ...}`` records.

Files are read like pretraining documents (:func:`~pretrain.data.readers.iter_documents`:
JSON Lines, plain, gzip or zstd, and Parquet). Nothing is dropped quietly: a record that is
not an example (unreadable, no text, no label) stops the read with an error naming its file
and line, since a classifier's accuracy means little on an unknown part of the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from pretrain.data.readers import ReadReport, iter_documents, no_documents_error

Label = int | str


@dataclass(frozen=True)
class LabeledExamples:
    texts: list[str]
    labels: list[int]
    """Index of each example's label in :attr:`label_names`."""
    label_names: list[Label]
    """The label values, sorted: the classifier's output ``i`` stands for ``label_names[i]``."""


def read_labeled(
    inputs: Sequence[str | os.PathLike],
    text_key: str = "text",
    label_key: str = "label",
    label_names: Sequence[Label] | None = None,
) -> LabeledExamples:
    """Every example of ``inputs``; labels are ints or strings.

    Args:
        label_names: the labels a classifier was built for (those of its training data); a
            label outside them is refused. None: the labels found, sorted.

    Raises:
        ValueError: an unreadable record, one without text or label (naming its file and line,
            or its id), a label that is not an int or a string, an unknown label, fewer than
            two labels, or no example at all.
    """
    report = ReadReport(strict=True)  # the first bad record stops the read, naming its line
    texts: list[str] = []
    values: list[Label] = []
    for doc in iter_documents(inputs, report, text_field=text_key):
        where = doc["id"]
        if label_key not in doc:
            raise ValueError(f"{where}: no {label_key!r} field (the label)")
        label = doc[label_key]
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise ValueError(f"{where}: label {label!r} is not an integer or a string")
        texts.append(doc["text"])
        values.append(label)
    if not texts:
        raise no_documents_error(inputs, report)
    names = sorted(set(values), key=_sort_key) if label_names is None else list(label_names)
    if label_names is None and len(names) < 2:
        raise ValueError(f"{list(map(os.fspath, inputs))}: one label only ({names[0]!r})")
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({v for v in values if v not in index}, key=_sort_key)
    if unknown:
        raise ValueError(
            f"{list(map(os.fspath, inputs))}: labels {unknown} are not among those the "
            f"classifier was trained for ({names})"
        )
    return LabeledExamples(texts, [index[v] for v in values], names)


def _sort_key(label: Label) -> tuple[int, int | str]:
    return (0, label) if isinstance(label, int) else (1, label)
