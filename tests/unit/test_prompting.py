"""``pretrain generate`` lays a prompt out as the run's objective trained the decoder."""

from __future__ import annotations

import pytest

from pretrain.config import ExperimentConfig, load_config
from pretrain.prompting import PromptPlan, prompt_ids, prompt_plan


def _cfg(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, ["--data.train=[x]", *overrides])


@pytest.mark.parametrize(
    ("overrides", "plan"),
    [
        ([], PromptPlan(prefix=False)),
        (["--objective.name=prefix_lm"], PromptPlan(prefix=True)),
        (["--objective.name=ul2"], PromptPlan(prefix=True, ul2_mode="S")),
        (["--objective.name=mixture", "--objective.mixture=[{name: clm}, {name: prefix_lm}]"],
         PromptPlan(prefix=False)),  # it also learned plain continuation
        (["--objective.name=mixture", "--objective.mixture=[{name: ul2}, {name: prefix_lm}]"],
         PromptPlan(prefix=True, ul2_mode="S")),
    ],
)  # fmt: skip
def test_the_plan_follows_the_objectives(overrides, plan):
    assert prompt_plan(_cfg(*overrides)) == plan


def test_flags_override_the_plan_and_a_mode_needs_ul2():
    assert prompt_plan(_cfg("--objective.name=prefix_lm"), "causal") == PromptPlan(False)
    assert prompt_plan(_cfg(), "prefix") == PromptPlan(True)
    assert prompt_plan(_cfg("--objective.name=ul2"), ul2_mode="X") == PromptPlan(True, "X")
    ul2_causal = prompt_plan(_cfg("--objective.name=ul2"), "causal")
    assert ul2_causal == PromptPlan(False, "S")  # asked for: the mode token, read causally
    with pytest.raises(ValueError, match="--ul2-mode: this run did not train with UL2"):
        prompt_plan(_cfg(), ul2_mode="S")


def test_ul2_prompts_carry_the_mode_token_and_eos_as_in_training(tokenizer):
    special = tokenizer.special
    text = tokenizer.encode("ROMEO:")
    assert prompt_ids("ROMEO:", tokenizer, PromptPlan(True, "S")) == [
        special.modes["[S]"], *text, special.eos
    ]  # fmt: skip
    assert prompt_ids("ROMEO:", tokenizer, PromptPlan(True)) == text
    assert prompt_ids("", tokenizer, PromptPlan(False)) == [special.eos]  # a new document
