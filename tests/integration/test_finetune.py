"""``pretrain finetune``: a run's model learns a labeled task; bad data is refused by line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from pretrain.cli import EXIT_BAD_INPUT, main
from pretrain.config import ExperimentConfig, load_config
from pretrain.eval.classifier import SequenceClassifier
from pretrain.eval.finetune import CLASSIFIER_FILE, encode, evaluate, padded
from pretrain.eval.labeled_data import LabeledExamples, read_labeled
from pretrain.runs import load_run
from pretrain.train.trainer import Trainer
from tests.integration.test_train import _overrides

FILLER = "the a of and to in was it that he she they on with as for at by from".split()


def _write_task(path: Path, n: int, seed: int) -> Path:
    """Filler text with one cue word: ``wonderful`` means "pos", ``terrible`` "neg"."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.choices(FILLER, k=rng.randint(4, 12))
        words.insert(rng.randint(0, len(words)), "wonderful" if label == "pos" else "terrible")
        lines.append(json.dumps({"text": " ".join(words), "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _pretrain(shards_dir, tokenizer_dir, run: Path, *family: str) -> Path:
    """Two steps of pretraining: the task is learned in fine-tuning, not before."""
    args = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=2)
    Trainer(load_config(ExperimentConfig, None, [*args, *family])).fit()
    return run


@pytest.fixture(scope="module")
def encoder_run(shards_dir, tokenizer_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mlm") / "run"
    return _pretrain(
        shards_dir, tokenizer_dir, run, "--model.family=encoder", "--objective.name=mlm"
    )


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("task")
    return _write_task(root / "train.jsonl", 240, 0), _write_task(root / "val.jsonl", 80, 1)


def _finetune(capsys, run, task, out, *extra: str) -> dict:
    train, val = task
    argv = ["finetune", "--run", str(run), "--train", str(train), "--val", str(val),
            "--out", str(out), "--epochs", "3", "--lr", "1e-3", "--batch-size", "16", "--json",
            *extra]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_an_encoder_learns_the_task_and_its_kept_epoch_reloads(encoder_run, task, tmp_path, capsys):
    summary = _finetune(capsys, encoder_run, task, tmp_path / "ft")
    assert summary["label_names"] == ["neg", "pos"]
    assert summary["num_train"] == 240 and summary["num_val"] == 80
    assert summary["val_accuracy"] >= 0.95 > summary["val_majority_accuracy"]
    best = summary["epochs"][summary["best_epoch"] - 1]
    assert best["val_accuracy"] == max(e["val_accuracy"] for e in summary["epochs"])
    lines = (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == summary["epochs"]
    # The weights written are the kept epoch's: they score its accuracy and loss again.
    from safetensors.torch import load_model

    run = load_run(encoder_run)
    model = SequenceClassifier(run.model, "encoder", 2, run.tokenizer.special.pad)
    load_model(model, str(tmp_path / "ft" / CLASSIFIER_FILE))
    val = read_labeled([task[1]], label_names=summary["label_names"])
    ids = encode(val, run.tokenizer, summary["settings"]["max_len"], "encoder")
    loss, accuracy = evaluate(model, ids, val.labels, 16)
    assert accuracy == best["val_accuracy"]
    assert loss == pytest.approx(best["val_loss"], rel=1e-5)
    # Seeded: the same command gives the same epochs; the untrained baseline is another run.
    again = _finetune(capsys, encoder_run, task, tmp_path / "ft", "--overwrite")
    assert again["epochs"] == summary["epochs"]
    fresh = _finetune(capsys, encoder_run, task, tmp_path / "fresh", "--random-init")
    assert fresh["epochs"] != summary["epochs"]


def test_bf16_autocast_learns_it_too_and_is_recorded(encoder_run, task, tmp_path, capsys):
    fp32 = _finetune(capsys, encoder_run, task, tmp_path / "fp32")
    assert fp32["settings"]["precision"] == "fp32"  # auto: fp32 off CUDA
    bf16 = _finetune(capsys, encoder_run, task, tmp_path / "bf16", "--precision", "bf16")
    assert bf16["settings"]["precision"] == "bf16"
    assert bf16["val_accuracy"] >= 0.95
    # the same steps in another precision: close, not equal
    for a, b in zip(bf16["epochs"], fp32["epochs"], strict=True):
        assert a["train_loss"] != b["train_loss"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.1, abs=0.02)


@pytest.mark.parametrize(("family", "objective"), [("decoder", "clm"), ("encoder_decoder", "span")])
def test_a_decoder_and_an_encoder_decoder_learn_it_too(
    family, objective, shards_dir, tokenizer_dir, task, tmp_path, capsys
):
    names = [f"--model.family={family}", f"--objective.name={objective}"]
    run = _pretrain(shards_dir, tokenizer_dir, tmp_path / "run", *names)
    summary = _finetune(capsys, run, task, tmp_path / "ft")
    assert summary["family"] == family
    assert summary["val_accuracy"] >= 0.9, summary["epochs"]
    out = tmp_path / "hf"
    argv = ["export", "--finetuned", str(tmp_path / "ft"), "--out", str(out)]
    if family == "encoder_decoder":  # mean-pooled: no Hugging Face class computes that
        assert main(argv) == EXIT_BAD_INPUT
        assert "no exact Hugging Face equivalent" in capsys.readouterr().err
        assert not out.exists()
        return
    assert main([*argv, "--checkpoint", "best"]) == EXIT_BAD_INPUT  # one classifier there
    assert "--checkpoint applies to --run" in capsys.readouterr().err
    assert main(argv) == 0
    _assert_hf_classifier_scores_as_ours(out, tmp_path / "ft", run, task[1], summary)


def _assert_hf_classifier_scores_as_ours(out, finetuned, run_dir, val_path, summary) -> None:
    """The exported model and tokenizer, loaded offline by the Auto classes, turn the val
    texts into the fine-tuned model's token ids, logits and accuracy."""
    from safetensors.torch import load_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    hf = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    val = read_labeled([val_path], label_names=summary["label_names"])
    texts = [*val.texts, " ".join(["wonderful"] * 60)]  # the last is cut to max_len
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    run = load_run(run_dir)
    ours = SequenceClassifier(run.model, "decoder", 2, run.tokenizer.special.pad)
    load_model(ours, str(finetuned / CLASSIFIER_FILE))
    ours.eval()
    max_len = summary["settings"]["max_len"]
    data = LabeledExamples(texts, [*val.labels, 1], summary["label_names"])
    ids = encode(data, run.tokenizer, max_len, "decoder")
    assert len(ids[-1]) == max_len
    got = [row[row != tokenizer.pad_token_id].tolist() for row in batch["input_ids"]]
    assert got == ids  # the exported tokenizer appends the EOS the classifier pools
    with torch.no_grad():
        theirs = hf(**batch).logits
        want = ours(padded(ids, ours.pad_id))
    torch.testing.assert_close(theirs, want, atol=1e-4, rtol=0)
    accuracy = (theirs[:-1].argmax(-1) == torch.tensor(val.labels)).float().mean().item()
    assert accuracy == pytest.approx(summary["val_accuracy"])


@pytest.mark.parametrize(
    ("bad_line", "label_names", "message"),
    [
        ('{"text": "no label here"}', None, "train.jsonl:3: no 'label' field"),
        ('{"text": "x", "label": 1.5}', None, "train.jsonl:3: label 1.5 is not an integer"),
        ('{"text": "broken', None, "train.jsonl:3: malformed_json"),
        ('{"text": "x", "label": "meh"}', ["neg", "pos"], "labels ['meh'] are not among"),
    ],
)
def test_bad_records_are_refused_naming_the_line(tmp_path, bad_line, label_names, message):
    path = tmp_path / "train.jsonl"
    good = [
        json.dumps({"text": "fine", "label": "pos"}),
        json.dumps({"text": "bad", "label": "neg"}),
    ]
    path.write_text("\n".join([*good, bad_line]) + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_labeled([path], label_names=label_names)


def test_the_cli_refuses_an_occupied_out_and_one_label(encoder_run, task, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["finetune", "--run", str(encoder_run), "--train", str(task[0]), "--val",
            str(task[1]), "--out", str(out)]  # fmt: skip
    assert main(argv) == EXIT_BAD_INPUT
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "x", "label": 1}) + "\n")
    assert main([*argv[:4], str(one), *argv[5:-1], str(tmp_path / "o2")]) == EXIT_BAD_INPUT
    assert "one label only" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
