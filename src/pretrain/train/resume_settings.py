"""What ``--resume`` takes from the checkpoint and what from the configuration.

A checkpoint restores weights, optimizer moments, data position and random states; the
configuration given on the command line decides everything else. So:

* optimizer hyperparameters (``optim.weight_decay``, ``optim.betas``, ``optim.eps``,
  ``optim.muon_momentum``) follow the configuration, as the learning rate does (it is set from
  the schedule every step), and not the values ``torch.optim.Optimizer.load_state_dict``
  brings back with the moments; the ``config.yaml`` the resumed run writes then describes
  what it trains with (another ``optim.name`` is refused: its state does not fit);
* a model that no longer fits the checkpoint (another shape, family or tokenizer) is refused
  with the keys that changed since the run's saved ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pretrain.train.errors import TrainingError

log = logging.getLogger(__name__)

# The per-group settings that the configuration decides (AdamW's, Muon's momentum), where a
# group has them; "lr" is set every step.
_CONFIGURED = ("weight_decay", "betas", "eps", "momentum")
# Settings that decide which weights a model has and their shapes.
_ARCHITECTURE_PREFIXES = ("model.", "data.tokenizer")
# Settings that decide the loader's sample sequence (its windows' length follows the
# objective: span corruption reads longer raw windows than it feeds the model).
DATA_PREFIXES = ("data.train", "data.weights", "train.seq_len", "train.seed", "objective.")


@contextmanager
def configured_hyperparameters(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Around loading ``optimizer``'s state: put the configured per-group settings back after
    it, logging those that differ from the checkpoint's."""
    configured = [
        {k: group[k] for k in _CONFIGURED if k in group} for group in optimizer.param_groups
    ]
    yield
    for i, (group, values) in enumerate(zip(optimizer.param_groups, configured, strict=True)):
        for key, value in values.items():
            saved = tuple(group[key]) if isinstance(group[key], list) else group[key]
            if saved != value:
                log.info("optimizer group %d: %s %s from the config (%s in the checkpoint)",
                         i, key, value, saved)  # fmt: skip
            group[key] = value


def architecture_changes(
    saved_config: Path,
    cfg: Any,
    saved_model: Path | None = None,
    model: dict[str, Any] | None = None,
    prefixes: tuple[str, ...] = _ARCHITECTURE_PREFIXES,
) -> list[str]:
    """``key: saved -> now`` for the settings under ``prefixes`` (default: the model and the
    tokenizer) that differ between the run's saved ``config.yaml`` and ``cfg`` (empty when the
    file is missing or unreadable).

    With ``saved_model`` (the run's resolved architecture, JSON) and ``model`` (the one built
    now), the architecture is compared field by field, so a size's default shows as its value
    (``model.d_model: 128 -> 64``) rather than as the unset config key (``None -> 64``)."""
    import json

    from pretrain.config import load_config

    try:
        saved = load_config(type(cfg), saved_config)
    except (OSError, ValueError):
        return []
    before, now = _flat(dataclasses.asdict(saved)), _flat(dataclasses.asdict(cfg))
    try:
        resolved = json.loads(saved_model.read_text()) if saved_model and model else None
    except (OSError, ValueError):
        resolved = None
    if resolved is not None:
        model = json.loads(json.dumps(model))  # as the file holds it: tuples as lists
        for key in resolved.keys() | model.keys():  # resolved values win over config keys
            before[f"model.{key}"], now[f"model.{key}"] = resolved.get(key), model.get(key)
    return [
        f"{key}: {before.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(before.keys() | now.keys())
        if key.startswith(prefixes) and before.get(key) != now.get(key)
    ]


def model_mismatch_error(
    run_dir: Path, cfg: Any, model: dict[str, Any], error: RuntimeError
) -> TrainingError:
    """The error for a checkpoint whose weights do not fit the configured ``model`` (its
    settings as a dict): the model and tokenizer settings changed since the run started, as
    its ``config.yaml`` and ``model_config.json`` recorded them, and ``load_state_dict``'s
    first reason."""
    from pretrain.train.run_files import MODEL_CONFIG_FILE

    changes = architecture_changes(run_dir / "config.yaml", cfg, run_dir / MODEL_CONFIG_FILE, model)
    what = f" (changed since the run started: {'; '.join(changes)})" if changes else ""
    return TrainingError(
        f"{run_dir / 'checkpoints'}: the latest checkpoint does not fit the configured "
        f"model{what}. Resume with the model and tokenizer the run was started with. Cause: "
        f"{first_reason(error)[:300]}"
    )


def optimizer_changes(run_dir: Path, cfg: Any) -> list[str]:
    """``optim.name: saved -> now`` when the run's saved ``config.yaml`` names another
    optimizer than ``cfg`` (empty when it does not, or cannot be read)."""
    return architecture_changes(run_dir / "config.yaml", cfg, prefixes=("optim.name",))


def optimizer_mismatch_error(
    run_dir: Path, cfg: Any, error: Exception | None = None
) -> TrainingError:
    """The error for optimizer state that does not fit the configured optimizer (another
    ``optim.name``: Muon's groups are not AdamW's), with ``error``, the cause, if any."""
    changes = optimizer_changes(run_dir, cfg)
    what = f" (changed since the run started: {'; '.join(changes)})" if changes else ""
    cause = f" Cause: {first_reason(error)[:300]}" if error is not None else ""
    return TrainingError(
        f"{run_dir / 'checkpoints'}: the latest checkpoint's optimizer state does not fit the "
        f"configured optimizer{what}. Resume with the optimizer the run was started with."
        f"{cause}"
    )


def first_reason(error: Exception) -> str:
    """The first line of ``error`` that says something: ``load_state_dict``'s message starts
    with a header ("Error(s) in loading state_dict for DecoderLM:") before the reasons."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1]
    return lines[0] if lines else type(error).__name__


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def data_mismatch_error(run_dir: Path, cfg: Any, error: ValueError) -> TrainingError:
    """The error for a loader state that does not fit the configured data: the settings that
    decide the sample sequence and changed since the run's ``config.yaml``, and the cause."""
    changes = architecture_changes(run_dir / "config.yaml", cfg, prefixes=DATA_PREFIXES)
    what = f" (changed since the run started: {'; '.join(changes)})" if changes else ""
    return TrainingError(
        f"{run_dir / 'checkpoints'}: the latest checkpoint's data position does not fit the "
        f"configured data{what}. Resume with the data, objective, seq_len and seed the run "
        f"was started with. Cause: {error}"
    )
