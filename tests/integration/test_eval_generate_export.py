"""eval / generate / export on a small trained run; HF export loads offline and matches."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.cli import EXIT_BAD_INPUT, main
from pretrain.config import ExperimentConfig, ModelConfig, load_config
from pretrain.data.shards import load_manifest, open_split
from pretrain.models.common import flex
from pretrain.models.spec import build_model
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.runs import load_run
from pretrain.tokenizer import Tokenizer, token_byte_lengths
from pretrain.train.trainer import Trainer
from tests.integration.test_train import _overrides


def _train(shards_dir, tokenizer_dir, run_dir, *extra: str, **kw) -> Path:
    args = _overrides(shards_dir, tokenizer_dir, run_dir, train__max_steps=8, **kw)
    Trainer(load_config(ExperimentConfig, None, [*args, *extra])).fit()
    return run_dir


@pytest.fixture(scope="module")
def llama_run(shards_dir, tokenizer_dir, tmp_path_factory) -> Path:
    return _train(shards_dir, tokenizer_dir, tmp_path_factory.mktemp("llama") / "run")


def _json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_token_byte_lengths_add_up_to_the_text_bytes(shards_dir, tokenizer: Tokenizer):
    lengths = np.asarray(token_byte_lengths(tokenizer))
    _, shards = open_split(shards_dir, "val")
    total = sum(int(lengths[np.asarray(s.tokens, dtype=np.int64)].sum()) for s in shards)
    assert total == load_manifest(shards_dir)["splits"]["val"]["num_text_bytes"]
    assert lengths[tokenizer.special.eos] == 0


def test_eval_reports_loss_perplexity_and_bits_per_byte(llama_run, shards_dir, capsys):
    result = _json(capsys, ["eval", "--run", str(llama_run), "--json"])
    assert result["step"] == 8 and result["checkpoint"] == "step_000008"
    assert result["objective"] == "clm"
    val_tokens = load_manifest(shards_dir)["splits"]["val"]["num_tokens"]
    assert result["tokens"] == (val_tokens - 1) // 32 * 32  # every val window, once
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    nats = result["loss"] * result["tokens"]
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / result["bytes"])
    # the number the trainer logged at the end matches a fresh evaluation of the checkpoint
    val_lines = [json.loads(x) for x in (llama_run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in val_lines if r["split"] == "val"][-1]
    limited = _json(capsys, ["eval", "--run", str(llama_run), "--json", "--max-batches", "3"])
    assert limited["loss"] == pytest.approx(last_val["loss"], rel=1e-6)
    assert main(["eval", "--run", str(llama_run), "--checkpoint", "step_3"]) == EXIT_BAD_INPUT


def test_generate_greedy_is_deterministic_and_sampling_is_seeded(llama_run, capsys):
    base = ["generate", "--run", str(llama_run), "--prompt", "It was", "--json"]
    greedy = [_json(capsys, [*base, "--temperature", "0", "--seed", str(s)]) for s in (1, 2)]
    assert greedy[0] == greedy[1] and greedy[0]["text"].startswith("It was")
    a = _json(capsys, [*base, "--seed", "7", "--top-k", "50"])
    b = _json(capsys, [*base, "--seed", "7", "--top-k", "50"])
    c = _json(capsys, [*base, "--seed", "8", "--top-k", "50"])
    assert a == b and a["new_token_ids"] != c["new_token_ids"]


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_hf_export_loads_offline_with_identical_logits_and_tokens(
    style, llama_run, shards_dir, tokenizer_dir, tmp_path, capsys
):
    transformers = pytest.importorskip("transformers")
    run = llama_run
    if style == "gpt2":
        run = _train(shards_dir, tokenizer_dir, tmp_path / "gpt2", "--model.style=gpt2")
    out = tmp_path / "hf"
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(out)]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    expected_cls = "LlamaForCausalLM" if style == "llama" else "GPT2LMHeadModel"
    assert type(hf_model).__name__ == expected_cls

    ours = load_run(run)
    text = "It is a truth universally acknowledged, that a single man"
    ids = ours.tokenizer.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == ours.tokenizer.special.eos
    # the exported tokenizer.json is the same tokenizer: shards made with ours are accepted
    assert Tokenizer.load(out).hash == ours.tokenizer.hash
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = ours.model.logits(ours.model.forward_tokens(x))
        got = hf_model(x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # beam search from the command line writes what the exported model's generate writes
    capsys.readouterr()
    argv = ["generate", "--run", str(run), "--prompt", text, "--num-beams", "3",
            "--max-new-tokens", "10", "--json"]  # fmt: skip
    eos = hf_tok.eos_token_id

    def hf_beams(length_penalty: float) -> list[int]:
        out = hf_model.generate(x, attention_mask=torch.ones_like(x), num_beams=3,
                                do_sample=False, max_new_tokens=10, eos_token_id=eos,
                                pad_token_id=eos, length_penalty=length_penalty)  # fmt: skip
        row = out[0, len(ids) :].tolist()
        return row[: row.index(eos)] if eos in row else row

    assert _json(capsys, argv)["new_token_ids"] == hf_beams(1.0)
    longer = _json(capsys, [*argv, "--length-penalty", "2"])["new_token_ids"]
    assert longer == hf_beams(2.0)
    assert main([*argv, "--temperature", "0"]) == EXIT_BAD_INPUT
    assert "--temperature: beam search (--num-beams) samples nothing" in capsys.readouterr().err
    sampled = ["generate", "--run", str(run), "--prompt", text, "--length-penalty", "2"]
    assert main(sampled) == EXIT_BAD_INPUT
    assert "--length-penalty applies to beam search" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
def test_hf_export_of_encoder_families_loads_offline_with_identical_logits_and_tokens(
    family, shards_dir, tokenizer_dir, tmp_path
):
    transformers = pytest.importorskip("transformers")
    objective = {"encoder": "mlm", "encoder_decoder": "span"}[family]
    run = _train(
        shards_dir,
        tokenizer_dir,
        tmp_path / family,
        f"--model.family={family}",
        f"--objective.name={objective}",
    )
    out = tmp_path / "hf"
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(out)]) == 0
    ours = load_run(run)
    special = ours.tokenizer.special
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert (hf_tok.pad_token_id, hf_tok.eos_token_id) == (special.pad, special.eos)
    texts = ["It is a truth universally acknowledged, that a single man", "Call me Ishmael."]
    ids = [ours.tokenizer.encode(t) for t in texts]
    assert [hf_tok(t, add_special_tokens=False)["input_ids"] for t in texts] == ids
    assert hf_tok.decode(ids[0]) == texts[0]
    # In HF the mask token or a sentinel written in the text is that special id (fill-mask,
    # span infilling); our tokenizer reads such strings as text, objectives insert ids.
    marker = "<|mask|>" if family == "encoder" else "<|extra_id_0|>"
    marker_id = special.mask if family == "encoder" else special.sentinels[0]
    left, right = "It is a truth universally ", ", that a single man"
    assert hf_tok(left + marker + right, add_special_tokens=False)["input_ids"] == [
        *ours.tokenizer.encode(left),
        marker_id,
        *ours.tokenizer.encode(right),
    ]

    if family == "encoder":
        assert hf_tok.mask_token_id == special.mask
        hf_model = transformers.BertForMaskedLM.from_pretrained(out, local_files_only=True)
        x = torch.tensor(ids[:1])  # our encoder masks no pads: compare one unpadded text
        with torch.no_grad():
            expected = ours.model.logits(ours.model.forward_tokens(x))
            got = hf_model(x).logits
    else:
        # T5 v1.1 has its own LM head: the file must say so (transformers 4 reads true as the
        # original T5, tying the head and rescaling the outputs), and 5.x must not re-tie it.
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
        hf_model = transformers.T5ForConditionalGeneration.from_pretrained(
            out, local_files_only=True
        )
        assert hf_model.lm_head.weight is not hf_model.shared.weight
        # a padded batch: HF masks the pads by attention_mask, we by the pad id
        enc = hf_tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        assert enc["attention_mask"][1].sum() < enc["attention_mask"][0].sum()
        labels = torch.tensor([ids[0][:6], ids[1][:6]])
        start = torch.full((2, 1), ours.model.cfg.decoder_start_id)
        dec = torch.cat([start, labels[:, :-1]], 1)
        batch = ModelBatch(
            enc["input_ids"], labels, AttentionSpec("bidirectional"), decoder_input_ids=dec
        )
        with torch.no_grad():
            expected = ours.model.logits(ours.model(batch))
            # HF shifts the labels right behind its own decoder_start_token_id
            got = hf_model(**enc, labels=labels).logits
    assert got.abs().max() > 1.0  # not a vacuous comparison
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and back: continued pretraining from the exported checkpoint imports the same weights
    imported = build_model(ModelConfig(family=family, init_from=str(out)), 0, 64, special.pad)
    for name, tensor in ours.model.state_dict().items():
        torch.testing.assert_close(imported.state_dict()[name], tensor, atol=0, rtol=0)


def test_export_into_a_non_empty_directory_needs_overwrite_and_then_replaces_it(
    llama_run, tmp_path, capsys
):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "vocab.txt").write_text("an earlier export's file\n")
    args = ["export", "--run", str(llama_run), "--out", str(out)]
    assert main(args) == EXIT_BAD_INPUT
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["vocab.txt"]  # untouched
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "vocab.txt").exists()  # nothing of the earlier export is left
    assert transformers.AutoConfig.from_pretrained(out, local_files_only=True).model_type == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary directory left
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    assert main(["export", "--run", str(llama_run), "--out", str(a_file)]) == EXIT_BAD_INPUT
    assert "a_file is a file, not a directory; pass --overwrite" in capsys.readouterr().err


def test_export_refuses_options_without_an_hf_equivalent(
    shards_dir, tokenizer_dir, tmp_path, capsys
):
    pytest.importorskip("transformers")
    run = _train(shards_dir, tokenizer_dir, tmp_path / "qk", "--model.qk_norm=true")
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "o")]) == EXIT_BAD_INPUT
    assert "qk_norm" in capsys.readouterr().err


def test_continued_pretraining_from_an_hf_checkpoint_of_another_width(
    shards_dir, tokenizer_dir, tokenizer, tmp_path, capsys
):
    pytest.importorskip("transformers")
    from pretrain.models.decoder.configs import decoder_config
    from pretrain.models.decoder.hf import to_hf
    from pretrain.models.decoder.model import DecoderLM

    source = DecoderLM(decoder_config("debug", tokenizer.vocab_size, d_model=96, n_heads=3))
    hf_dir = tmp_path / "hf"
    to_hf(source).save_pretrained(hf_dir)
    run = tmp_path / "continued"
    args = _overrides(shards_dir, tokenizer_dir, run, train__max_steps=2)
    args = [a for a in args if not a.startswith("--model.")]  # the checkpoint decides
    cfg = load_config(ExperimentConfig, None, [*args, f"--model.init_from={hf_dir}"])
    trainer = Trainer(cfg)
    imported = trainer.model.state_dict()
    assert all(torch.equal(v, imported[k]) for k, v in source.state_dict().items())
    trainer.fit()
    # the continued run evaluates and exports with its own (imported) architecture
    assert load_run(run).model.cfg.d_model == 96
    result = _json(capsys, ["eval", "--run", str(run), "--json", "--max-batches", "2"])
    assert result["step"] == 2
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "again")]) == 0
    # architecture overrides next to init_from are refused, naming them
    bad = [*args, f"--model.init_from={hf_dir}", "--model.d_model=64"]
    assert main(["train", *bad]) == EXIT_BAD_INPUT
    assert "model.d_model" in capsys.readouterr().err


def test_a_flex_run_loads_on_cpu_with_dense_attention(llama_run, tmp_path):
    run = tmp_path / "flex_run"
    shutil.copytree(llama_run, run)
    arch_file = run / "model_config.json"
    arch = json.loads(arch_file.read_text())
    arch_file.write_text(json.dumps({**arch, "attention_backend": "flex"}))  # trained on GPU
    loaded, reference = load_run(run), load_run(llama_run)
    backend = loaded.model.cfg.attention_backend  # the switch itself: dense off CUDA only
    assert not flex.enabled(backend, "cpu") and flex.enabled(backend, "cuda")
    # ...and the same weights: packed documents, the spec that takes a backend's own path
    x = torch.randint(0, 500, (2, 16))
    spec = AttentionSpec("causal", document_ids=(torch.arange(16) >= 7).long().expand(2, 16))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.forward_tokens(x, attention=spec),
            reference.model.forward_tokens(x, attention=spec),
            atol=0,
            rtol=0,
        )


def test_exporting_a_prefix_lm_decoder_warns_that_hf_attends_causally(caplog):
    from pretrain.export import _warn_about_prefix_attention

    mixture = "[{name: clm, weight: 1}, {name: prefix_lm, weight: 1}]"
    for overrides, warns in [
        (["--objective.name=prefix_lm"], True),
        (["--objective.name=mixture", f"--objective.mixture={mixture}"], True),
        ([], False),
    ]:
        caplog.clear()
        _warn_about_prefix_attention(load_config(ExperimentConfig, None, overrides))
        assert ("attends causally everywhere" in caplog.text) == warns, overrides
