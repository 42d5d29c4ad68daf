"""``pretrain fewshot`` end to end: a decoder pretrained on text where each example's last word
decides its answer word classifies new examples in context; bad input is refused by name."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
from pathlib import Path

import pytest

from pretrain.cli import main

GOOD = ["good", "great", "lovely", "superb", "fine", "charming"]
BAD = ["bad", "awful", "dull", "poor", "boring", "weak"]
FILLER = ["the", "film", "was", "a", "story", "plot", "very", "really", "movie", "quite"]
ANSWERS = ("negative", "positive")


def _example(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    words = [rng.choice(FILLER) for _ in range(rng.randint(1, 3))]
    return " ".join([*words, rng.choice(GOOD if label else BAD)]), label


def _write_labeled(path: Path, examples: list[tuple[str, int]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in examples))
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    """A decoder trained 40 steps on documents of solved examples (``the plot dull
    negative``, blank lines between), and labeled train and eval files of new ones."""
    out = tmp_path_factory.mktemp("few_shot")
    rng = random.Random(0)
    with open(out / "corpus.jsonl", "w") as f:
        for i in range(400):
            solved = [f"{t} {ANSWERS[y]}" for t, y in (_example(rng) for _ in range(6))]
            f.write(json.dumps({"id": str(i), "text": "\n\n".join(solved)}) + "\n")
    train = _write_labeled(out / "train.jsonl", [_example(rng) for _ in range(100)])
    evaluate = _write_labeled(out / "eval.jsonl", [_example(rng) for _ in range(60)])
    tok, shards, run = out / "tok", out / "shards", out / "run"
    corpus = str(out / "corpus.jsonl")
    argv = ["tokenizer", "train", "--input", corpus, "--vocab-size", "512", "--out", str(tok)]
    assert main(argv) == 0
    assert main(["data", "tokenize", "--tokenizer", str(tok), "--input", corpus, "--out",
                 str(shards), "--val-fraction", "0.05"]) == 0  # fmt: skip
    # scored during training too, at steps 20 and 40 (eval.tasks)
    tasks = (f"[{{name: words, train: [{train}], eval: [{evaluate}], template: '{{text}}', "
             "answers: {0: negative, 1: positive}, shots: 3}]")  # fmt: skip
    printed = io.StringIO()  # the run's closing table (the fixture outlives capsys)
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--model.size=debug", "--model.d_model=64",
                     "--model.n_layers=2", "--model.n_heads=4", f"--data.train=[{shards}]",
                     f"--data.val={shards}", f"--data.tokenizer={tok}", "--train.seq_len=128",
                     "--train.micro_batch_size=8", "--train.tokens_per_batch=1024",
                     "--train.max_steps=40", "--optim.lr=3e-3", "--optim.warmup_steps=5",
                     "--eval.every_steps=20", "--eval.max_batches=2", f"--eval.tasks={tasks}",
                     "--checkpoint.every_steps=20", "--log.progress=false", "--log.plots=false",
                     "--log.tensorboard=false", f"--run.dir={run}"])  # fmt: skip
    assert code == 0
    return {"run": run, "train": train, "eval": evaluate, "dir": out,
            "train_output": printed.getvalue()}  # fmt: skip


def _argv(task: dict[str, Path], *extra: str) -> list[str]:
    return ["fewshot", "--run", str(task["run"]), "--train", str(task["train"]),
            "--eval", str(task["eval"]), "--template", "{text}",
            "--answer", "0=negative", "1=positive", *extra]  # fmt: skip


def test_the_pretrained_decoder_classifies_in_context(task, capsys):
    predictions = task["dir"] / "predictions.jsonl"
    capsys.readouterr()
    argv = _argv(task, "--shots", "3", "--json", "--predictions", str(predictions))
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 60 and summary["mean_shots"] == 3 and summary["truncated"] == 0
    assert summary["majority_accuracy"] < 0.65  # both labels common: no trivial answer
    assert summary["accuracy"] >= 0.95 and summary["accuracy_calibrated"] >= 0.95
    # the first prompt: three solved examples of the training file, then the question
    first = summary["first_prompt"].split("\n\n")
    assert len(first) == 4 and first[-1].split()[-1] in ANSWERS
    train_texts = {json.loads(line)["text"] for line in task["train"].read_text().splitlines()}
    assert all(" ".join(block.split()[:-1]) in train_texts for block in first[:3])
    # every example's record: the accuracy is what its log-likelihoods say
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 60 and all(r["choices"] == list(ANSWERS) for r in records)
    best = [max(range(2), key=r["log_likelihoods"].__getitem__) for r in records]
    assert best == [r["prediction"] for r in records]
    assert (
        sum(b == r["answer"] for b, r in zip(best, records, strict=True)) / 60
        == summary["accuracy"]
    )
    assert best.count(1) == summary["predicted"]["raw"].get("positive", 0)


def test_zero_shots_and_a_short_context_give_fewer_demonstrations(task, capsys):
    capsys.readouterr()
    assert main(_argv(task, "--shots", "0", "--json", "--max-examples", "10")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 10 and summary["mean_shots"] == 0
    assert "\n\n" not in summary["first_prompt"]
    # 60 shots of about 5 tokens do not fit in train.seq_len (128): as many as fit
    assert main(_argv(task, "--shots", "60", "--json", "--max-examples", "10")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fewer_shots"] == 10 and 10 < summary["mean_shots"] < 60


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--answer", "0=negative"], "--answer: give one word for each label of the data (0, 1)"),
        (["--answer", "0negative", "1=positive"], "--answer: write LABEL=WORD, got '0negative'"),
        (["--template", "Review:"], "template must hold {text}"),
        (["--choices-key", "choices"], "answers name the words of labels"),  # with --answer
    ],
)
def test_bad_settings_are_refused_by_name(task, capsys, extra, message):
    argv = _argv(task)
    cut = argv.index("--answer")
    argv = argv[:cut] + extra if extra[0] == "--answer" else argv + extra
    capsys.readouterr()
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_eval_label_the_training_file_lacks_is_refused(task, tmp_path, capsys):
    odd = _write_labeled(tmp_path / "odd.jsonl", [("the plot fine", 1), ("a film", 2)])
    argv = _argv(task)
    argv[argv.index(str(task["eval"]))] = str(odd)
    capsys.readouterr()
    assert main(argv) == 2
    assert "labels [2] are not among those" in capsys.readouterr().err


def test_an_example_longer_than_the_context_is_scored_on_its_last_tokens(task, tmp_path, capsys):
    words = " ".join(f"w{i}" for i in range(300)) + " the plot dull"  # far past 128 tokens
    long = _write_labeled(tmp_path / "long.jsonl", [(words, 0), ("a film superb", 1)])
    argv = _argv(task, "--shots", "2", "--json")
    argv[argv.index(str(task["eval"]))] = str(long)
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["truncated"] == 1 and summary["fewer_shots"] == 1
    assert summary["first_prompt"].endswith("w299 the plot dull negative")
    assert "w0 " not in summary["first_prompt"] and "\n\n" not in summary["first_prompt"]
    assert summary["accuracy"] == 1.0  # the deciding last word was kept


def _choice_question(rng: random.Random) -> dict:
    """A multiple-choice record: the right answer word among two others, in random order."""
    text, label = _example(rng)
    choices = [ANSWERS[label], ANSWERS[1 - label], rng.choice(FILLER)]
    rng.shuffle(choices)
    return {"text": text, "choices": choices, "label": choices.index(ANSWERS[label])}


def test_multiple_choice_questions_each_with_their_own_choices(task, tmp_path, capsys):
    rng = random.Random(1)
    files = {}
    for name, n in (("mc_train", 50), ("mc_eval", 40)):
        records = [_choice_question(rng) for _ in range(n)]
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["fewshot", "--run", str(task["run"]), "--train", str(files["mc_train"]), "--eval",
            str(files["mc_eval"]), "--template", "{text}", "--choices-key", "choices",
            "--shots", "2", "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 40 and summary["choices"] is None
    assert summary["chance_accuracy"] == pytest.approx(1 / 3)
    assert summary["accuracy"] >= 0.9
    # answers given are counted by position, which differs from question to question
    assert sum(summary["predicted"]["raw"].values()) == 40
    assert len(summary["predicted"]["raw"]) == 3
    # a solved example ends with its right choice
    solved = summary["first_prompt"].split("\n\n")[0].split()
    assert solved[-1] in ANSWERS and solved[-2] in GOOD + BAD
    assert (solved[-2] in GOOD) == (solved[-1] == "positive")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "a", "choices": ["x"], "label": 0}, "must be a list of at least two"),
        ({"text": "a", "choices": ["x", "y"], "label": 2}, "must be the index of the right"),
        ({"text": "a", "choices": ["x", ""], "label": 0}, "must be a list of at least two"),
    ],
)
def test_a_bad_multiple_choice_record_is_refused_naming_its_line(
    task, tmp_path, capsys, record, message
):
    bad = tmp_path / "bad.jsonl"
    good = {"text": "b", "choices": ["x", "y"], "label": 1}
    bad.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    argv = ["fewshot", "--run", str(task["run"]), "--train", str(bad), "--eval", str(bad),
            "--choices-key", "choices"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.jsonl:2" in err


def test_tasks_scored_during_training_equal_fewshot_on_the_same_checkpoint(task, capsys):
    from pretrain.train.metrics import read_metrics

    val = [r for r in read_metrics(task["run"]) if r["split"] == "val"]
    assert [r["step"] for r in val] == [20, 40]
    for record in val:
        during = record["downstream"]["words"]
        assert during["examples"] == 60
        capsys.readouterr()
        argv = _argv(task, "--shots", "3", "--json", "--checkpoint", f"step_{record['step']}")
        assert main(argv) == 0
        after = json.loads(capsys.readouterr().out)
        for key in ("accuracy", "accuracy_per_char", "accuracy_calibrated"):
            assert during[key] == after[key], (record["step"], key)
    assert val[-1]["downstream"]["words"]["accuracy"] >= 0.95
    # the run's closing table says it too
    accuracy = f"{val[-1]['downstream']['words']['accuracy']:.4f}"
    assert re.search(rf"words: few-shot accuracy\s*│\s*{accuracy}", task["train_output"])
