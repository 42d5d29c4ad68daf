"""Read (parameters, tokens, FLOPs, loss) points from a CSV: a ladder's results or published data.

Columns are found by name, case-insensitively: parameters (``params``, ``num_params``, ``N``,
``Model Size`` as in Epoch AI's ``svg_extracted_data.csv``), tokens (``tokens``, ``D``),
FLOPs (``flops``, ``C``, ``Training FLOP``) and loss (``loss``, ``val_loss``). Two of
parameters, tokens and FLOPs give the third by ``C = 6 N D`` (Epoch computes D = C / (6 N)).

A row whose value is empty, not a number, not finite or not positive cannot be a point; like
the data readers' bad lines it is skipped and reported (``Points.skipped``: file line, column,
value, reason) so that a fit on fewer points says why, or, with ``strict``, refused naming the
line.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_NAMES = {
    "params": ("params", "num_params", "parameters", "n", "model size", "model_size"),
    "tokens": ("tokens", "num_tokens", "training tokens", "d"),
    "flops": ("flops", "compute", "c", "training flop", "training flops", "training_flops"),
    "loss": ("loss", "val_loss", "final_loss", "final loss"),
}


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A CSV row that is not a point: its line in the file and the first value at fault."""

    line: int
    column: str
    value: str | None
    reason: str  # "empty", "not a number", "not finite" or "not positive"

    def __str__(self) -> str:
        return f"{self.column} {self.reason} ({self.value!r})"


@dataclasses.dataclass
class Points:
    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    skipped: list[SkippedRow] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)

    def drop_highest_loss(self, k: int) -> Points:
        """Without the ``k`` highest losses (Epoch dropped 5 of 245 as outliers)."""
        keep = np.sort(np.argsort(self.loss)[: len(self) - k]) if k > 0 else np.arange(len(self))
        return dataclasses.replace(
            self,
            params=self.params[keep],
            tokens=self.tokens[keep],
            flops=self.flops[keep],
            loss=self.loss[keep],
        )

    def skipped_report(self) -> dict[str, Any]:
        """JSON-ready: how many rows were skipped, and per reason how many and on which lines."""
        by_reason: dict[str, dict[str, Any]] = {}
        for row in self.skipped:
            entry = by_reason.setdefault(
                f"{row.column} {row.reason}", {"count": 0, "lines": [], "first_value": row.value}
            )
            entry["count"] += 1
            entry["lines"].append(row.line)
        return {"count": len(self.skipped), "by_reason": by_reason}

    def skipped_lines(self, first: int = 5) -> list[str]:
        """One line of text per reason: how many rows, the first ``first`` of their lines."""
        out = []
        for reason, entry in self.skipped_report()["by_reason"].items():
            n, lines = entry["count"], entry["lines"]
            where = ", ".join(str(line) for line in lines[:first]) + (", ..." if n > first else "")
            out.append(
                f"skipped {n} row{'s' if n > 1 else ''} with {reason} "
                f"(line{'s' if n > 1 else ''} {where}; first value {entry['first_value']!r})"
            )
        return out


def _column(header: list[str], what: str) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[n] for n in _NAMES[what] if n in lowered), None)


def _parse(
    row: dict[str, Any], cols: dict[str, str | None], keys: Sequence[str]
) -> tuple[dict[str, float], tuple[str, str | None, str] | None]:
    """The row's values of ``keys``, or the ``(column, value, reason)`` of the first that
    cannot be a point's (N, D and the loss are taken logs of: each must be positive)."""
    values = {}
    for key in keys:
        column = cols[key]
        text = row.get(column)
        if text is None or not text.strip():
            return values, (column, text, "empty")
        try:
            value = float(text)
        except ValueError:
            return values, (column, text, "not a number")
        if not math.isfinite(value):
            return values, (column, text, "not finite")
        if value <= 0:
            return values, (column, text, "not positive")
        values[key] = value
    return values, None


def read_points(path: str | Path, strict: bool = False) -> Points:
    """Points of ``path``; a row with a value that is empty, not a number, not finite or not
    positive is skipped and listed in ``Points.skipped`` (or, with ``strict``, refused).

    Raises:
        ValueError: naming the columns found when loss or two of N, D, C are missing; with
            ``strict``, naming the line of the first row that is not a point.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        cols = {k: _column(header, k) for k in _NAMES}
        have = [k for k in ("params", "tokens", "flops") if cols[k]]
        if cols["loss"] is None or len(have) < 2:
            raise ValueError(
                f"{path}: needs a loss column and two of params, tokens, flops; found columns "
                f"{header} (accepted names: {_NAMES})"
            )
        rows, skipped = [], []
        for row in reader:
            values, fault = _parse(row, cols, (*have, "loss"))
            if fault is None:
                rows.append(values)
                continue
            bad = SkippedRow(reader.line_num, *fault)  # the file's line (the row's last)
            if strict:
                raise ValueError(f"{path}:{bad.line}: {bad}")
            skipped.append(bad)
    points = Points(*(np.array([]) for _ in range(4)), skipped=skipped)
    if not rows:
        reasons = "; ".join(points.skipped_lines()) or "a header only"
        raise ValueError(f"{path}: no rows with positive finite values ({reasons})")
    get = {k: np.array([r[k] for r in rows]) for k in (*have, "loss")}
    if "params" not in get:
        get["params"] = get["flops"] / (6.0 * get["tokens"])
    if "tokens" not in get:
        get["tokens"] = get["flops"] / (6.0 * get["params"])
    if "flops" not in get:
        get["flops"] = 6.0 * get["params"] * get["tokens"]
    return dataclasses.replace(
        points, params=get["params"], tokens=get["tokens"], flops=get["flops"], loss=get["loss"]
    )
