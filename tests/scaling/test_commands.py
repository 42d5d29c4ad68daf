"""``pretrain scaling ...`` JSON contract and a 2 x 2 ladder trained end to end on CPU."""

from __future__ import annotations

import csv
import json
import math
import shlex

import numpy as np
import pytest
import torch

from pretrain.cli import EXIT_BAD_INPUT, main
from pretrain.config import ExperimentConfig, load_config
from pretrain.data.loader import TokenBatch
from pretrain.objectives import build_objective
from pretrain.scaling.batch_flops import batch_flops
from pretrain.scaling.chinchilla import EPOCH
from pretrain.scaling.counts import build_meta_model
from pretrain.tokenizer import Tokenizer


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_flops_json(capsys):
    out = _json(capsys, ["scaling", "flops", "--params", "174.6e9", "--tokens", "300e9", "--json"])
    assert out["flops"] == pytest.approx(3.14e23, rel=1e-3)  # GPT-3 175B, Table D.1
    assert out["flops_counted_as"] == "6N per token, N = --params (C = 6ND; no attention term)"


GPT2_SMALL = ["--set", "model.size=gpt2-small", "--set", "model.style=gpt2",
              "--set", "train.seq_len=1024", "--vocab-size", "50257"]  # fmt: skip


@pytest.mark.parametrize(
    ("attention", "per_token", "label"),
    [
        # reference/scaling.md §4.3: nanoGPT's 855,166,464 for its N = 123,653,376, less 6 x
        # the 121,344 biases and norms no matmul multiplies by (test_flops.py); kaplan halves
        # the 12 LHQT = 113,246,208 attention term; none drops it
        ("palm", 854_438_400, "6N + 12LHQT per token, N = matmul (causal LM; the trainer's"),
        ("kaplan", 854_438_400 - 56_623_104, "6N + 6LHQT per token, N = matmul (causal LM; "
         "the trainer counts 6N + 12LHQT"),
        ("none", 6 * 123_532_032, "6N per token, N = matmul (causal LM; the trainer counts"),
    ],
)  # fmt: skip
def test_flops_fields_say_which_count_and_which_n(capsys, attention, per_token, label):
    out = _json(capsys, ["scaling", "flops", *GPT2_SMALL, "--attention", attention, "--json"])
    assert out["flops_per_token"] == per_token
    assert out["flops_counted_as"].startswith(label)
    assert out["flops"] == pytest.approx(out["flops_per_token"] * out["tokens"], rel=1e-12)
    # the 6N fields share one N, every parameter (Chinchilla's, as plan, ladder and fit count)
    assert out["params"] == out["total"] == 124_439_808
    assert out["flops_per_token_6n"] == 6 * out["params"]
    assert out["flops_6nd"] == pytest.approx(out["flops_per_token_6n"] * out["tokens"], rel=1e-12)
    assert out["flops_6nd_counted_as"].startswith("flops_per_token_6n x tokens, 6N with N = params")


def test_flops_of_a_mixture_of_experts_count_the_experts_a_token_uses(capsys):
    base = ["scaling", "flops", "--set", "model.size=tiny", "--set", "model.d_ff=512",
            "--set", "train.seq_len=256", "--vocab-size", "4096", "--json"]  # fmt: skip
    dense = _json(capsys, base)
    moe = _json(capsys, [*base, "--set", "model.n_experts=8"])  # top 2 of 8
    expert, router, layers = 3 * 256 * 512, 8 * 256, 4  # one SwiGLU expert's weights
    assert moe["total"] - dense["total"] == layers * (7 * expert + router)
    assert moe["active"] - dense["active"] == layers * (expert + router)  # 2 experts, not 1
    assert dense["active"] == dense["total"]
    assert moe["flops_per_token_6n"] == 6 * moe["active"]
    assert moe["flops_per_token"] - dense["flops_per_token"] == 6 * layers * (expert + router)


def test_a_ladder_of_a_mixture_of_experts_is_refused(capsys):
    argv = ["scaling", "ladder", "--config", "configs/tiny-clm.yaml", "--sizes", "debug",
            "--tokens-per-param", "20", "--set", "model.n_experts=8"]  # fmt: skip
    assert main(argv) == EXIT_BAD_INPUT
    assert "model.n_experts=8" in capsys.readouterr().err


def test_flops_of_an_mlm_config_is_the_trainers_count_per_input_token(capsys, tokenizer_dir):
    """MFU from ``scaling flops`` divides by what the trainer's does: masked LM projects only
    its selected positions onto the vocabulary, so it does fewer FLOPs than 6N + 12LHQT."""
    argv = ["scaling", "flops", "--config", "configs/bert-mlm.yaml", "--set",
            f"data.tokenizer={tokenizer_dir}", "--tokens-per-second", "1000",
            "--peak-flops", "1e12", "--json"]  # fmt: skip
    out = _json(capsys, argv)
    assert "mlm batches" in out["flops_counted_as"]
    assert out["flops_per_token"] < out["flops_per_token_6n_12lhqt"]
    assert out["mfu"] == pytest.approx(1000 * out["flops_per_token"] / 1e12)
    # what batch_flops gives for a batch the objective draws (masking varies: 2%)
    cfg = load_config(ExperimentConfig, "configs/bert-mlm.yaml", [])
    tokenizer = Tokenizer.load(tokenizer_dir)
    model = build_meta_model(cfg.model, tokenizer.vocab_size, cfg.train.seq_len)
    objective = build_objective(cfg.objective, tokenizer, cfg.train.seq_len, family="encoder")
    ids = torch.randint(tokenizer.vocab_size, (8, cfg.train.seq_len + 1))
    zeros = torch.zeros(8, dtype=torch.long)
    batch = objective(TokenBatch(ids, torch.zeros_like(ids), zeros, zeros), torch.Generator())
    per_token = batch_flops(model, batch) / batch.input_ids.numel()
    assert per_token == pytest.approx(out["flops_per_token"], rel=0.02)
    assert main([*argv[:-1], "--params", "1e9"]) == EXIT_BAD_INPUT  # one model, not two


def test_a_set_without_a_value_is_refused_naming_set(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["scaling", "flops", "--set", "model.size"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "argument --set: expected KEY=VALUE (e.g. model.size=debug), got 'model.size'" in (
        capsys.readouterr().err
    )


def test_plan_json(capsys):
    out = _json(capsys, ["scaling", "plan", "--compute", "5.76e23", "--no-shape", "--json"])
    for method in ("chinchilla", "epoch", "tokens_per_param_20"):
        assert 6 * out[method]["params"] * out[method]["tokens"] == pytest.approx(5.76e23)
    assert out["chinchilla"]["params"] == pytest.approx(40.4e9, rel=0.01)  # Fig. 4: 40B


def test_fit_json(capsys, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "points.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Model Size", "Training FLOP", "loss"])  # Epoch's column names
        for n in np.logspace(7, 9.5, 6):
            for d in np.logspace(9, 11.5, 6):
                w.writerow([n, 6 * n * d, EPOCH.loss(n, d) * np.exp(1e-3 * rng.normal())])
    out = _json(
        capsys,
        [
            "scaling",
            "fit",
            str(path),
            "--bootstrap",
            "2",
            "--json",
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    for name in ("E", "A", "B", "alpha", "beta"):
        assert name in out and len(out["intervals"][name]) == 2
    assert out["alpha"] == pytest.approx(EPOCH.alpha, rel=0.05)
    assert out["E"] == pytest.approx(EPOCH.E, rel=0.02)
    assert (tmp_path / "plots" / "loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_names_missing_columns(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("size,loss\n1,2\n")
    assert main(["scaling", "fit", str(path), "--json"]) == 2
    assert "params" in capsys.readouterr().err


def _sets(shards_dir, tokenizer_dir, run_dir) -> list[str]:
    values = {
        "model.size": "debug",
        "model.n_heads": 2,
        "data.train": f"[{shards_dir}]",
        "data.val": str(shards_dir),
        "data.tokenizer": str(tokenizer_dir),
        "train.seq_len": 32,
        "train.micro_batch_size": 4,
        "train.tokens_per_batch": 128,
        "optim.lr": 3e-3,
        "optim.warmup_steps": 2,
        "eval.every_steps": 0,
        "eval.max_batches": 2,
        "checkpoint.every_steps": 0,
        "log.every_steps": 1,
        "log.progress": False,
        "log.tensorboard": False,
        "log.sample_tokens": 0,
        "run.dir": str(run_dir),
    }
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def test_ladder_two_by_two(capsys, shards_dir, tokenizer_dir, tmp_path):
    argv = [
        "scaling",
        "ladder",
        *_sets(shards_dir, tokenizer_dir, tmp_path / "ladder"),
        "--sizes",
        "1x16",
        "2x32",
        "--tokens-per-param",
        "0.01,0.02",
    ]
    plan = _json(capsys, [*argv, "--dry-run", "--json"])["runs"]
    assert len(plan) == 4 and all(r["loss"] is None for r in plan)
    assert not (tmp_path / "ladder").exists()  # a dry run trains nothing
    steps = {r["name"]: r["steps"] for r in plan}
    assert steps["2x32-r0.02"] > steps["2x32-r0.01"] >= 1
    assert all(r["tokens"] == r["steps"] * 128 for r in plan)

    # on a cluster: one job per rung (--only NAME), then a plain rerun collects the CSV
    capsys.readouterr()
    assert main([*argv, "--commands"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert [shlex.split(c)[-2:] for c in commands] == [["--only", r["name"]] for r in plan]
    for command in commands:  # each job plans the same ladder as the original argv
        job = shlex.split(command)[1:-2]
        assert _json(capsys, [*job, "--dry-run", "--json"])["runs"] == plan
    assert main(shlex.split(commands[0])[1:]) == 0
    capsys.readouterr()
    with (tmp_path / "ladder" / "ladder.csv").open() as f:
        trained = [row["name"] for row in csv.DictReader(f) if row["loss"]]
    assert trained == [plan[0]["name"]]

    runs = _json(capsys, [*argv, "--json"])["runs"]
    assert [r["name"] for r in runs] == [r["name"] for r in plan]
    with (tmp_path / "ladder" / "ladder.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        assert 0 < float(row["loss"]) < math.log(1024) + 1  # below uniform over the vocabulary
        assert float(row["flops"]) == pytest.approx(6 * int(row["params"]) * int(row["tokens"]))
    # bigger model trained longer: lower loss than the smallest rung
    by_name = {r["name"]: float(r["loss"]) for r in rows}
    assert by_name["2x32-r0.02"] < by_name["1x16-r0.01"]
    # a rerun finds every rung done and trains nothing
    again = _json(capsys, [*argv, "--json"])["runs"]
    assert [r["loss"] for r in again] == [r["loss"] for r in runs]
