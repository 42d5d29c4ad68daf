"""``pretrain generate`` lays a prompt out as the run's objective trained the decoder."""

from __future__ import annotations

import pytest

from pretrain.blank_prompts import encode_with_blanks, encoder_decoder_prompt_ids
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


def test_blanks_are_special_ids_and_the_space_before_one_goes_with_the_hidden_word(tokenizer):
    special = tokenizer.special
    ids = encode_with_blanks("The <|extra_id_0|> sat on <|extra_id_1|><|mask|>.", tokenizer)
    s0, s1 = special.sentinels[:2]
    assert ids == [
        *tokenizer.encode("The"), s0, *tokenizer.encode(" sat on"), s1, special.mask,
        *tokenizer.encode("."),
    ]  # fmt: skip
    # The hidden word's own token carries the space: " cat" fills the blank as in training.
    assert tokenizer.encode("The cat") == [*tokenizer.encode("The"), *tokenizer.encode(" cat")]
    # Other special names (mode tokens, EOS) stay text, as in the training data.
    assert encode_with_blanks("[S]<|eos|>", tokenizer) == tokenizer.encode("[S]<|eos|>")


@pytest.mark.parametrize(
    ("overrides", "text", "first", "mode"),
    [
        (["--objective.name=span"], "a <|extra_id_0|> b", None, None),
        (["--objective.name=prefix_lm"], "a b", None, None),
        (["--objective.name=bart"], "a <|mask|> b", "bos", None),
        (["--objective.name=ul2"], "a <|extra_id_0|> b", "[R]", "R"),  # span filling
        (["--objective.name=ul2"], "a b", "[S]", "S"),  # continuation
    ],
)
def test_encoder_inputs_are_laid_out_as_the_objective_trained_them(
    tokenizer, overrides, text, first, mode
):
    cfg = _cfg("--model.family=encoder_decoder", *overrides)
    ids, used = encoder_decoder_prompt_ids(text, tokenizer, cfg)
    special = tokenizer.special
    start = {None: [], "bos": [special.bos], "[R]": [special.modes["[R]"]]}
    start["[S]"] = [special.modes["[S]"]]
    assert ids == [*start[first], *encode_with_blanks(text, tokenizer), special.eos]
    assert used == mode


def test_a_ul2_mode_is_asked_for_only_of_ul2_runs(tokenizer):
    t5 = _cfg("--model.family=encoder_decoder", "--objective.name=ul2")
    ids, mode = encoder_decoder_prompt_ids("a b", tokenizer, t5, ul2_mode="X")
    assert ids[0] == tokenizer.special.modes["[X]"] and mode == "X"
    span = _cfg("--model.family=encoder_decoder", "--objective.name=span")
    with pytest.raises(ValueError, match="--ul2-mode: this run did not train with UL2"):
        encoder_decoder_prompt_ids("a", tokenizer, span, ul2_mode="R")
