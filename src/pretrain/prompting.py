"""How ``pretrain generate`` lays out a prompt for a decoder, as its objective trained it.

- Causal LM: the prompt's tokens, attended causally.
- Prefix LM (Raffel et al. 2020, §3.2.1): the prompt is the prefix, so its tokens attend to
  each other bidirectionally, as in training; the continuation attends causally to all of it.
- UL2 on a decoder (Tay et al. 2022, §3.1.2): training saw ``[mode] inputs [EOS] targets
  [EOS]`` with the prefix ``[mode] inputs [EOS]`` bidirectional; the prompt is laid out the
  same way, by default in the S (prefix LM) mode, the mode for open-ended continuation.

A run that also trained causally (a mixture with ``clm``) prompts causally unless told
otherwise. Mode tokens are not read from the prompt's text: the tokenizer encodes ``[S]``
typed in a prompt as the three characters it is, as it did in the training data.
"""

from __future__ import annotations

import dataclasses
import typing

from pretrain.config import ExperimentConfig
from pretrain.tokenizer import Tokenizer

Attention = typing.Literal["auto", "causal", "prefix"]
MODES = ("R", "S", "X")


@dataclasses.dataclass(frozen=True)
class PromptPlan:
    prefix: bool
    """The prompt attends bidirectionally to itself (a prefix)."""
    ul2_mode: str | None = None
    """``R``, ``S`` or ``X``: the UL2 mode token first and EOS after the text."""

    def describe(self) -> str:
        attention = "bidirectional over the prompt" if self.prefix else "causal"
        mode = f", UL2 mode [{self.ul2_mode}] and EOS around it" if self.ul2_mode else ""
        return f"{attention}{mode}"


def prompt_plan(
    cfg: ExperimentConfig, attention: Attention = "auto", ul2_mode: str | None = None
) -> PromptPlan:
    """What a run's decoder expects of a prompt; ``attention`` and ``ul2_mode`` override it.

    Raises:
        ValueError: a UL2 mode for a run that did not train UL2, or an unknown mode.
    """
    names = objective_names(cfg)
    if ul2_mode is not None:
        check_ul2_mode(ul2_mode, names)
    elif "ul2" in names and "clm" not in names:
        ul2_mode = "S"
    if attention == "auto":  # a UL2 prompt is a prefix, as in training
        prefix = ul2_mode is not None or ("clm" not in names and bool(names & {"prefix_lm"}))
    else:
        prefix = attention == "prefix"
    return PromptPlan(prefix, ul2_mode)


def objective_names(cfg: ExperimentConfig) -> set[str]:
    """The objectives a run trained with (a mixture's components)."""
    return {objective.name for objective, _ in cfg.objective.components()}


def check_ul2_mode(ul2_mode: str, names: set[str]) -> None:
    """Refuse an unknown ``--ul2-mode``, or one for a run that did not train UL2."""
    if ul2_mode not in MODES:
        raise ValueError(f"--ul2-mode must be one of {', '.join(MODES)}, got {ul2_mode!r}")
    if "ul2" not in names:
        raise ValueError(
            f"--ul2-mode: this run did not train with UL2 (objectives: {sorted(names)})"
        )


def prompt_ids(text: str, tokenizer: Tokenizer, plan: PromptPlan) -> list[int]:
    """The prompt's token ids; an empty causal prompt starts a new document (EOS)."""
    ids = tokenizer.encode(text)
    special = tokenizer.special
    if plan.ul2_mode is not None:
        return [special.modes[f"[{plan.ul2_mode}]"], *ids, special.eos]
    return ids or [special.eos]
