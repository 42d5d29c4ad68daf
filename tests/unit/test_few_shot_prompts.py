"""Few-shot prompts: the layout of solved examples, the draw of demonstrations, and how a
prompt is fitted into the model's context."""

from __future__ import annotations

import pytest

from pretrain.eval.few_shot_data import answer_words
from pretrain.eval.few_shot_prompts import FewShotFormat, draw_demonstrations, fit_prompt

FMT = FewShotFormat("Review: {text}\nSentiment:")


def test_solved_examples_then_the_question_separated_by_blank_lines():
    context = FMT.context([("dull", "negative"), ("superb", "positive")], "fine")
    assert context == (
        "Review: dull\nSentiment: negative\n\n"
        "Review: superb\nSentiment: positive\n\n"
        "Review: fine\nSentiment:"
    )
    assert FMT.continuation("positive") == " positive"
    assert FMT.context([], "fine") == "Review: fine\nSentiment:"
    assert FMT.premise() == "Sentiment:"
    assert FewShotFormat("{text}").premise() == ""


def test_a_template_without_text_is_refused():
    with pytest.raises(ValueError, match="must hold {text}"):
        FewShotFormat("Review:")


def test_demonstrations_are_distinct_seeded_per_example_and_never_the_example_itself():
    pool = [f"text {i}" for i in range(50)]
    drawn = [draw_demonstrations(pool, 5, 0, index, "text 7") for index in range(40)]
    assert all(len(d) == 5 and len(set(d)) == 5 and 7 not in d for d in drawn)
    assert len({tuple(d) for d in drawn}) > 30  # each example its own draw
    # the same draw whoever asks, and another with another seed
    assert draw_demonstrations(pool, 5, 0, 3, "text 7") == drawn[3]
    assert draw_demonstrations(pool, 5, 1, 3, "text 7") != drawn[3]
    # a pool smaller than the shots gives all of it but the example
    assert sorted(draw_demonstrations(pool[:4], 9, 0, 0, "text 2")) == [0, 1, 3]


def test_an_example_repeated_in_the_pool_still_gets_all_its_shots():
    # "same" fills most of the pool: the two spare draws cannot cover it
    pool = ["same"] * 40 + [f"other {i}" for i in range(6)]
    for index in range(30):
        drawn = draw_demonstrations(pool, 5, 0, index, "same")
        assert len(drawn) == len(set(drawn)) == 5
        assert all(pool[i] != "same" for i in drawn)
    # fewer other texts than shots: all of them
    assert sorted(draw_demonstrations(pool, 9, 0, 0, "same")) == list(range(40, 46))


def _words(text: str) -> list[int]:
    """A tokenizer of one token per word (its length), enough to count."""
    return [len(w) for w in text.split()]


def _fit(demonstrations, text, budget):
    words = text.split()
    return fit_prompt(
        FMT,
        demonstrations,
        text,
        encode_context=_words,
        tokenize_text=lambda t: list(range(len(t.split()))),
        detokenize=lambda ids: " ".join(words[len(words) - len(ids) :]),
        max_context_tokens=budget,
    )


def test_the_demonstrations_farthest_from_the_example_are_dropped_to_fit():
    demos = [("one two three", "negative"), ("four five", "positive"), ("six", "negative")]
    # each solved example: "Review:" + words + "Sentiment:" + answer; the question: 2 + words
    full = _fit(demos, "seven", 100)
    assert full.shots == 3 and not full.truncated and len(full.context_ids) == 6 + 5 + 4 + 3
    fitted = _fit(demos, "seven", 12)
    assert fitted.shots == 2 and not fitted.truncated
    assert fitted.context == FMT.context(demos[1:], "seven")  # the closest kept
    assert fitted.context_ids == _words(fitted.context)


def test_an_example_too_long_alone_keeps_its_last_tokens():
    fitted = _fit([("one", "positive")], "a b c d e f g", 5)
    assert fitted.shots == 0 and fitted.truncated
    assert fitted.context == FMT.context([], "e f g")
    assert fitted.context_ids == _words(fitted.context)
    with pytest.raises(ValueError, match="the template alone takes 2 tokens"):
        _fit([], "a b", 1)


def test_answer_words_cover_the_labels_exactly():
    assert answer_words([0, 1], {"1": "positive", "0": "negative"}) == ("negative", "positive")
    assert answer_words(["neg", "pos"], None) == ("neg", "pos")
    with pytest.raises(ValueError, match="missing: 1"):
        answer_words([0, 1], {"0": "negative"})
    with pytest.raises(ValueError, match=r"no such label: \['2'\]"):
        answer_words([0, 1], {"0": "negative", "1": "positive", "2": "neutral"})
    with pytest.raises(ValueError, match="two labels have the same answer word"):
        answer_words([0, 1], {"0": "yes", "1": "yes"})


def _layout(tokenizer, family: str, objective: str, **objective_keys):
    from pretrain.config import ExperimentConfig
    from pretrain.eval.answer_layout import AnswerLayout

    cfg = ExperimentConfig()
    cfg.model.family = family
    cfg.objective.name = objective
    for key, value in objective_keys.items():
        setattr(cfg.objective, key, value)
    return AnswerLayout(cfg, tokenizer)


@pytest.mark.parametrize(
    ("family", "objective", "encoder", "decoder_prefix"),
    [
        # span corruption: the answer fills a blank at the end, after its sentinel
        ("encoder_decoder", "span", "{text} s0 EOS", "s0"),
        # BART's decoder rewrites its input: the prompt, then the answer in the masked blank
        ("encoder_decoder", "bart", "BOS {text} MASK EOS", "BOS {text}"),
        ("encoder_decoder", "prefix_lm", "{text} EOS", ""),
        ("encoder_decoder", "ul2", "[S] {text} EOS", ""),  # continuation: the S denoiser
        ("decoder", "clm", "{text}", None),
        ("decoder", "ul2", "[S] {text} EOS", None),
    ],
)
def test_each_objective_reads_the_prompt_as_it_trained(
    tokenizer, family, objective, encoder, decoder_prefix
):
    layout = _layout(tokenizer, family, objective)
    special = tokenizer.special
    names = {"s0": [special.sentinels[0]], "EOS": [special.eos], "BOS": [special.bos],
             "MASK": [special.mask], "[S]": [special.modes["[S]"]]}  # fmt: skip
    context = "Review: fine\nSentiment:"

    def ids(pattern: str) -> list[int]:
        out: list[int] = []
        for part in pattern.split():
            out += tokenizer.encode(context) if part == "{text}" else names[part]
        return out

    assert layout.encode_context(context) == ids(encoder)
    if decoder_prefix is not None:
        assert layout.decoder_prefix(context) == ids(decoder_prefix)
    assert layout.prefix == (family == "decoder" and objective == "ul2")
