"""Read (parameters, tokens, FLOPs, loss) points from a CSV: a ladder's results or published data.

Columns are found by name, case-insensitively: parameters (``params``, ``num_params``, ``N``,
``Model Size`` as in Epoch AI's ``svg_extracted_data.csv``), tokens (``tokens``, ``D``),
FLOPs (``flops``, ``C``, ``Training FLOP``) and loss (``loss``, ``val_loss``). Two of
parameters, tokens and FLOPs give the third by ``C = 6 N D`` (Epoch computes D = C / (6 N)).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

_NAMES = {
    "params": ("params", "num_params", "parameters", "n", "model size", "model_size"),
    "tokens": ("tokens", "num_tokens", "training tokens", "d"),
    "flops": ("flops", "compute", "c", "training flop", "training flops", "training_flops"),
    "loss": ("loss", "val_loss", "final_loss", "final loss"),
}


@dataclasses.dataclass
class Points:
    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)

    def drop_highest_loss(self, k: int) -> Points:
        """Without the ``k`` highest losses (Epoch dropped 5 of 245 as outliers)."""
        keep = np.sort(np.argsort(self.loss)[: len(self) - k]) if k > 0 else np.arange(len(self))
        return Points(self.params[keep], self.tokens[keep], self.flops[keep], self.loss[keep])


def _column(header: list[str], what: str) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[n] for n in _NAMES[what] if n in lowered), None)


def read_points(path: str | Path) -> Points:
    """Points of ``path``; rows with an empty or non-finite value are skipped.

    Raises:
        ValueError: naming the columns found when loss or two of N, D, C are missing.
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
        rows = []
        for row in reader:
            try:
                values = {k: float(row[cols[k]]) for k in (*have, "loss")}
            except (TypeError, ValueError):
                continue
            if all(math.isfinite(v) and v > 0 for v in values.values()):
                rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no rows with positive finite values")
    get = {k: np.array([r[k] for r in rows]) for k in (*have, "loss")}
    if "params" not in get:
        get["params"] = get["flops"] / (6.0 * get["tokens"])
    if "tokens" not in get:
        get["tokens"] = get["flops"] / (6.0 * get["params"])
    if "flops" not in get:
        get["flops"] = 6.0 * get["params"] * get["tokens"]
    return Points(get["params"], get["tokens"], get["flops"], get["loss"])
