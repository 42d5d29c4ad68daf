"""Masked LM end to end: an encoder trains from the CLI, resumes exactly with dynamic masking,
evaluates, and exports to BertForMaskedLM."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.beam_search import encoder_decoder_beam_search
from pretrain.blank_prompts import encode_with_blanks
from pretrain.cli import main
from pretrain.config import ExperimentConfig, load_config
from pretrain.eval.choice_scoring import encoder_decoder_log_likelihoods
from pretrain.generate_encoder_decoder import fill_spans, generate_encoder_decoder
from pretrain.runs import load_run
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.helpers import losses as _losses
from tests.helpers import straight_and_resumed
from tests.integration.test_train import _overrides

MLM = ["--model.family=encoder", "--objective.name=mlm", "--optim.lr=2e-3"]


def _args(shards_dir, tokenizer_dir, run, **kw) -> list[str]:
    return [*_overrides(shards_dir, tokenizer_dir, run, **kw), *MLM]


def test_mlm_trains_from_the_cli_with_falling_loss(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *_args(shards_dir, tokenizer_dir, run, train__max_steps=30)]) == 0
    losses = [loss for _, loss in _losses(run)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    val = _losses(run, "val")
    assert val[-1][1] < val[0][1]


def test_mlm_resume_is_exact_with_dynamic_masking(shards_dir, tokenizer_dir, tmp_path, monkeypatch):
    cfg = lambda run: load_config(ExperimentConfig, None, _args(shards_dir, tokenizer_dir, run))  # noqa: E731
    straight, crashed = straight_and_resumed(cfg, tmp_path, monkeypatch)
    assert _losses(crashed) == _losses(straight)
    assert _losses(crashed, "val") == _losses(straight, "val")


def test_mlm_run_evaluates_and_exports_to_bert(shards_dir, tokenizer_dir, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "run"
    Trainer(load_config(ExperimentConfig, None, _args(shards_dir, tokenizer_dir, run))).fit()
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json", "--max-batches", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    last_val = _losses(run, "val")[-1][1]
    assert result["loss"] == pytest.approx(last_val, rel=1e-6)  # same fixed masking
    val_record = [r for r in read_metrics(run) if r["split"] == "val"][-1]
    assert 0.0 <= result["accuracy"] <= 1.0  # counting itself: test_losses.py
    assert result["accuracy"] == pytest.approx(val_record["accuracy"], rel=1e-9)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert type(hf).__name__ == "BertForMaskedLM"
    ours = load_run(run)
    x = torch.randint(200, 1000, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(
            hf(x).logits, ours.model.logits(ours.model.forward_tokens(x)), atol=1e-5, rtol=1e-5
        )
    # generate fills the prompt's <|mask|>: the same top tokens and probabilities as HF's MLM
    prompt = "It was the <|mask|> of"
    capsys.readouterr()
    assert main(["generate", "--run", str(run), "--prompt", prompt, "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = ours.tokenizer.encode("It was the") + [ours.tokenizer.special.mask]
    ids += ours.tokenizer.encode(" of")
    with torch.no_grad():
        probs = hf(torch.tensor([ids])).logits[0, len(ids) - 2].softmax(-1)
    best = probs.topk(3)
    [candidates] = out["masks"]
    assert [c["token_id"] for c in candidates] == best.indices.tolist()
    assert [c["probability"] for c in candidates] == pytest.approx(best.values.tolist(), abs=1e-5)
    top = ours.tokenizer.decode([best.indices[0].item()])
    assert out["filled"] == ours.tokenizer.decode(ids).replace("<|mask|>", top)
    assert main(["generate", "--run", str(run), "--prompt", "no blank"]) == 2
    # sampling settings do nothing to an encoder: refused, not ignored
    capsys.readouterr()
    argv = ["generate", "--run", str(run), "--prompt", prompt, "--temperature", "0", "--seed", "1"]
    assert main(argv) == 2
    assert "--temperature, --seed: an encoder run writes no tokens" in capsys.readouterr().err
    # nor is an encoder scored few-shot: it writes no answer
    argv = ["fewshot", "--run", str(run), "--train", "t.jsonl", "--eval", "e.jsonl"]
    assert main(argv) == 2
    assert "few-shot scoring needs a model that writes text" in capsys.readouterr().err


def test_span_corruption_resume_is_exact(shards_dir, tokenizer_dir, tmp_path, monkeypatch):
    span = ["--model.family=encoder_decoder", "--objective.name=span", "--train.seq_len=48",
            "--train.tokens_per_batch=384"]  # fmt: skip
    args = lambda run: [*_overrides(shards_dir, tokenizer_dir, run), *span]  # noqa: E731
    cfg = lambda run: load_config(ExperimentConfig, None, args(run))  # noqa: E731
    straight, crashed = straight_and_resumed(cfg, tmp_path, monkeypatch)
    assert _losses(crashed) == _losses(straight)
    assert load_run(crashed).model.cfg.pad_id == load_run(crashed).tokenizer.special.pad


def test_generate_fills_the_sentinels_of_a_span_corruption_prompt(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    span = ["--model.family=encoder_decoder", "--objective.name=span", "--train.seq_len=48",
            "--train.tokens_per_batch=384", "--train.max_steps=4"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *_overrides(shards_dir, tokenizer_dir, run), *span]) == 0
    loaded = load_run(run)
    tokenizer = loaded.tokenizer
    prompt = "It was <|extra_id_0|> the <|extra_id_1|>."
    capsys.readouterr()
    argv = ["generate", "--run", str(run), "--prompt", prompt, "--temperature", "0", "--json"]
    assert main([*argv, "--max-new-tokens", "12"]) == 0
    out = json.loads(capsys.readouterr().out)
    encoder_input = encode_with_blanks(prompt, tokenizer) + [tokenizer.special.eos]
    expected = generate_encoder_decoder(loaded.model, torch.tensor(encoder_input), 12, 0.0)
    expected = expected.tolist()
    if tokenizer.special.eos in expected:
        expected = expected[: expected.index(tokenizer.special.eos)]
    assert out["new_token_ids"] == expected  # greedy: the model's own output, up to EOS
    assert out["text"] == tokenizer.decode(expected)
    filled = fill_spans(encoder_input[:-1], expected, tokenizer.special.sentinels)
    assert out["filled"] == tokenizer.decode(filled)
    assert main([*argv, "--attention", "prefix"]) == 2  # a decoder's option
    # beam search: the search's best hypothesis, up to EOS
    assert main(["generate", "--run", str(run), "--prompt", prompt, "--json", "--num-beams", "2",
                 "--max-new-tokens", "12"]) == 0  # fmt: skip
    [beams] = encoder_decoder_beam_search(
        loaded.model, torch.tensor([encoder_input]), 12, 2, tokenizer.special.eos
    )
    eos = tokenizer.special.eos
    expected = beams[: beams.index(eos)] if eos in beams else beams
    assert json.loads(capsys.readouterr().out)["new_token_ids"] == expected

    # few-shot: the answer is scored as the span of a blank at the prompt's end
    records = [{"text": "It was the best", "label": 1}, {"text": "of times", "label": 0}]
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps(r) + "\n" for r in records))
    predictions = tmp_path / "predictions.jsonl"
    argv = ["fewshot", "--run", str(run), "--train", str(labeled), "--eval", str(labeled),
            "--shots", "1", "--answer", "0=no", "1=yes",
            "--predictions", str(predictions)]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(predictions.read_text().splitlines()[0])
    context = "of times\nAnswer: no\n\nIt was the best\nAnswer:"  # the other record, solved
    special = tokenizer.special
    encoder_input = [*tokenizer.encode(context), special.sentinels[0], special.eos]
    expected = encoder_decoder_log_likelihoods(
        loaded.model,
        [(encoder_input, [special.sentinels[0]], tokenizer.encode(f" {w}")) for w in ("no", "yes")],
    )
    assert first["log_likelihoods"] == pytest.approx(expected, abs=1e-6)


def test_encoder_decoder_prefix_lm_trains_from_the_cli(shards_dir, tokenizer_dir, tmp_path):
    args = ["--model.family=encoder_decoder", "--objective.name=prefix_lm",
            "--train.seq_len=48", "--train.tokens_per_batch=384", "--optim.lr=2e-3"]  # fmt: skip
    run = tmp_path / "run"
    overrides = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=30)
    assert main(["train", *overrides, *args]) == 0
    losses = [loss for _, loss in _losses(run)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
