"""Pretraining objectives: pure functions from a TokenBatch to a ModelBatch.

Each objective names the model families it supports; :func:`check_pairing` refuses a bad
pairing when the config is loaded, not at step 1000.
"""

from __future__ import annotations

from typing import Any

from pretrain.objectives.clm import CausalLM

OBJECTIVES: dict[str, type] = {"clm": CausalLM}


def check_pairing(objective: str, family: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective.name {objective!r}; choose one of {sorted(OBJECTIVES)}"
        )
    families = OBJECTIVES[objective].families
    if family not in families:
        raise ValueError(
            f"objective.name {objective!r} does not train model.family {family!r}; "
            f"it supports {list(families)}"
        )


def build_objective(name: str, **options: Any):
    check_pairing(name, OBJECTIVES[name].families[0] if name in OBJECTIVES else "")
    return OBJECTIVES[name](**options)
