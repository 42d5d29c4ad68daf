"""Configs: strict keys and types, dotted overrides, save/load round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from pretrain.config import ConfigError, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Train:
    seq_len: int = 128
    max_steps: int = 10
    compile: bool = False
    device: str | None = None


@dataclass
class Experiment:
    train: Train = field(default_factory=Train)
    optim: Optim = field(default_factory=Optim)
    paths: list[str] = field(default_factory=list)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_typed_config(tmp_path: Path):
    path = _yaml(tmp_path, "train:\n  seq_len: 256\noptim:\n  schedule: wsd\npaths: [a, b]\n")
    cfg = load_config(
        Experiment, path, ["--optim.lr=3e-4", "train.compile=true", "--train.device=cpu"]
    )
    assert cfg.train == Train(seq_len=256, max_steps=10, compile=True, device="cpu")
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.schedule == "wsd"
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.paths == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "overrides", "blamed", "message"),
    [
        (
            "train:\n  seq_lenn: 3\n",
            ["--optim.lr=1"],
            "file",
            "unknown config key 'train.seq_lenn'; valid keys here: seq_len",
        ),
        ("train:\n  seq_len: abc\n", [], "file", "'train.seq_len' must be an integer"),
        ("optim: 3\n", [], "file", "optim: expected a mapping"),
        (
            "optim: 3\n",
            ["--optim.lr=1"],
            "file",
            "optim: expected a mapping, got int 3 (override '--optim.lr=1' sets a key in it)",
        ),
        ("", ["--optim.learning_rate=1"], 0, "unknown config key 'optim.learning_rate'"),
        ("", ["--optimm.lr=1"], 0, "unknown config key 'optimm'"),
        ("", ["--optim.lr=1", "--train.seq_len=abc"], 1, "'train.seq_len' must be an integer"),
        ("", ["--train.compile=3"], 0, "'train.compile' must be true or false"),
        ("", ["--optim.schedule=step"], 0, "'optim.schedule' must be one of ['cosine', 'wsd'"),
        ("", ["--optim.betas=[1]"], 0, "'optim.betas' must have 2 items"),
        ("", ["--optim=3", "--optim.lr=1"], 0, "optim: expected a mapping, got int 3"),
        ("train:\n  seq_len: 3\n", ["--train.seq_len=x"], 0, "'train.seq_len' must be an"),
    ],
)
def test_bad_keys_and_types_are_named_with_the_file_or_override_that_set_them(
    tmp_path: Path, text, overrides, blamed, message
):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, path, overrides)
    source = f"{path}: " if blamed == "file" else f"override {overrides[blamed]!r}: "
    assert str(err.value).startswith(source + message), str(err.value)


def test_saved_config_loads_back_equal(tmp_path: Path):
    cfg = load_config(Experiment, None, ["--train.max_steps=99", "--paths=[x]"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Experiment, tmp_path / "resolved.yaml") == cfg


def test_an_integer_written_in_exponent_form_is_an_integer():
    cfg = load_config(Experiment, None, ["--train.max_steps=1e3"])
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(Experiment, None, ["--train.max_steps=1.5e0"])


def test_malformed_override_is_named():
    with pytest.raises(ConfigError, match="'--train.seq_len' must look like --section.key=value"):
        load_config(Experiment, None, ["--train.seq_len"])


PIPELINE = "--distributed.pipeline_parallel_degree=2 --distributed.strategy=ddp"
CONTEXT = "--distributed.context_parallel_degree=2 --distributed.strategy=ddp"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--train.max_steps=0", "train.max_steps must be >= 1"),
        ("--optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
        ("--train.activation_memory_budget=0", r"activation_memory_budget must be in \(0, 1\]"),
        ("--train.compile_mode=reduce-overhead", "applies to compiled steps only"),
        ("--train.max_minutes=0", "train.max_minutes must be > 0"),
        ("--optim.lr=0", "optim.lr must be > 0"),
        ("--optim.betas=[0.9,1.0]", r"optim.betas\[1\] must be in \[0, 1\)"),
        ("--distributed.timeout_seconds=0", "distributed.timeout_seconds must be > 0"),
        ("--distributed.replicate_degree=0", "distributed.replicate_degree must be >= 1"),
        ("--distributed.replicate_degree=2", "set distributed.strategy=fsdp"),
        ("--optim.muon_momentum=1", r"optim.muon_momentum must be in \[0, 1\)"),
        ("--distributed.tensor_parallel_degree=0", "tensor_parallel_degree must be >= 1"),
        ("--distributed.sequence_parallel=true", "set distributed.tensor_parallel_degree > 1"),
        (
            "--distributed.tensor_parallel_degree=2 --distributed.strategy=fsdp "
            "--distributed.sequence_parallel=true --train.seq_len=33",
            "train.seq_len=33 must be a multiple of distributed.tensor_parallel_degree=2",
        ),
        (
            "--distributed.tensor_parallel_degree=2 --distributed.strategy=ddp",
            "composes with FSDP: set distributed.strategy=fsdp",
        ),
        (
            "--distributed.tensor_parallel_degree=2 --distributed.strategy=fsdp "
            "--model.family=encoder_decoder --objective.name=span",
            "model.family=encoder_decoder is not supported",
        ),
        (
            "--distributed.tensor_parallel_degree=2 --distributed.strategy=fsdp "
            "--model.n_experts=4",
            r"model.n_experts=4 \(a mixture of experts\) is not supported",
        ),
        ("--distributed.context_parallel_degree=0", "context_parallel_degree must be >= 1"),
        ("--distributed.context_parallel_degree=2", "set distributed.strategy=ddp or fsdp"),
        (
            f"{CONTEXT} --model.family=xlnet --objective.name=plm",
            r"model.family=xlnet is not supported \(decoder and encoder are\)",
        ),
        (
            f"{CONTEXT} --train.seq_len=34 --train.tokens_per_batch=272",
            "cuts each sequence into 4 equal chunks: train.seq_len=34 is not a multiple of 4",
        ),
        (
            f"{CONTEXT} --distributed.strategy=fsdp --distributed.tensor_parallel_degree=2 "
            "--distributed.sequence_parallel=true",
            "does not compose with distributed.sequence_parallel: unset it",
        ),
        ("--distributed.pipeline_parallel_degree=0", "pipeline_parallel_degree must be >= 1"),
        ("--distributed.pipeline_parallel_degree=2", "set distributed.strategy=ddp or fsdp"),
        (
            f"{PIPELINE} --distributed.tensor_parallel_degree=2",
            "tensor_parallel_degree=2 composes with FSDP",
        ),
        (
            f"{PIPELINE} --model.family=encoder --objective.name=mlm",
            "model.family=encoder is not supported",
        ),
        (f"{PIPELINE} --model.n_experts=4", "model.n_experts=4 .* is not supported"),
        (
            f"{PIPELINE} --train.compile=true --train.compile_scope=model",
            "train.compile_scope=model compiles the whole model's forward, which no stage runs",
        ),
        (  # 2 micro-batches of 2 x 64 tokens a step
            f"{PIPELINE} --distributed.pipeline_parallel_degree=4 --train.seq_len=64 "
            "--train.micro_batch_size=2 --train.tokens_per_batch=256",
            r"1f1b needs at least as many micro-batches a step .* = 2\) as stages",
        ),
        (f"{PIPELINE} --distributed.pipeline_stages_per_rank=2", "use 2 or more with"),
        (f"{PIPELINE} --distributed.pipeline_schedule=interleaved_1f1b", "use 2 or more with"),
        (f"{PIPELINE} --distributed.pipeline_schedule=looped_bfs", "use 2 or more with"),
        (  # 5 micro-batches: rounds of 2 and a half
            f"{PIPELINE} --distributed.pipeline_schedule=interleaved_1f1b "
            "--distributed.pipeline_stages_per_rank=2 --train.seq_len=64 "
            "--train.micro_batch_size=2 --train.tokens_per_batch=640",
            "in 2 equal rounds .* 5 micro-batches .* do not split so; make them a multiple of 2",
        ),
    ],
)
def test_experiment_values_at_their_bounds_are_refused_by_key(override, message):
    from pretrain.config import ExperimentConfig

    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, None, ["--data.train=[x]", *override.split()]).validate()


TASK = "name: s, train: [t.jsonl], eval: [e.jsonl]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([f"--eval.tasks=[{{{TASK}, shots: -1}}]"], r"eval.tasks\[0\].shots must be >= 0"),
        ([f"--eval.tasks=[{{{TASK}, template: 'Q:'}}]"], r"eval.tasks\[0\].template must hold"),
        ([f"--eval.tasks=[{{{TASK}, max_examples: 0}}]"], r"tasks\[0\].max_examples must be >= 1"),
        (["--eval.tasks=[{name: s, eval: [e.jsonl]}]"], r"eval.tasks\[0\]: give the task's train"),
        ([f"--eval.tasks=[{{{TASK}, answers: {{0: a}}, choices_key: c}}]"], "give one"),
        ([f"--eval.tasks=[{{{TASK}}}, {{{TASK}}}]"], "two tasks have one name"),
        ([f"--eval.tasks=[{{{TASK}, shot: 2}}]"], r"unknown config key 'eval.tasks\[0\].shot'"),
        ([f"--eval.tasks=[{{{TASK}}}]", "--data.val="], "set data.val too"),
        (
            [f"--eval.tasks=[{{{TASK}}}]", "--model.family=encoder", "--objective.name=mlm"],
            "needs a model that writes text",
        ),  # fmt: skip
        (
            [
                f"--eval.tasks=[{{{TASK}}}]",
                "--distributed.strategy=fsdp",
                "--distributed.tensor_parallel_degree=2",
                "--distributed.sequence_parallel=true",
            ],
            "eval.tasks scores prompts of any length",
        ),  # fmt: skip
        (
            [f"--eval.tasks=[{{{TASK}}}]", *PIPELINE.split()],
            "eval.tasks is not supported with pipeline parallelism",
        ),  # fmt: skip
    ],
)
def test_few_shot_tasks_in_training_are_checked_when_the_config_loads(overrides, message):
    from pretrain.config import ExperimentConfig

    with pytest.raises(ConfigError, match=message):
        load_config(
            ExperimentConfig, None, ["--data.train=[x]", "--data.val=v", *overrides]
        ).validate()


def test_experiment_values_at_their_bounds_are_accepted():
    from pretrain.config import ExperimentConfig

    cfg = load_config(
        ExperimentConfig,
        None,
        ["--data.train=[x]", "--optim.min_lr_ratio=0", "--optim.decay_fraction=1",
         "--optim.warmup_steps=0", "--optim.betas=[0.0,0.0]"],
    ).validate()  # fmt: skip
    assert cfg.optim.min_lr_ratio == 0.0 and cfg.optim.betas == (0.0, 0.0)


@pytest.mark.parametrize(
    ("tokens", "world", "expected"),
    [
        (1024, 1, 4),  # 1024 / (8 x 32)
        (1024, 2, 2),  # each of 2 ranks: 1024 / (8 x 32 x 2)
        (320, 1, "set train.micro_batch_size=5"),  # 320 = 2 x 5 x 32: the largest that fits
        (320, 2, "set train.micro_batch_size=5"),  # 320 = 1 x 5 x 32 x 2
        (48, 1, "make train.tokens_per_batch a multiple of 256"),  # no micro-batch fits
        (224, 2, "make train.tokens_per_batch a multiple of 512"),  # 7 x 32 fits one rank only
    ],
)
def test_gradient_accumulation_comes_from_the_token_batch_or_the_error_says_what_fits(
    tokens, world, expected
):
    from pretrain.config import ExperimentConfig

    overrides = ["--train.seq_len=32", "--train.micro_batch_size=8"]
    cfg = load_config(ExperimentConfig, None, [*overrides, f"--train.tokens_per_batch={tokens}"])
    if isinstance(expected, int):
        assert cfg.grad_accum_steps(world) == expected
        return
    with pytest.raises(ConfigError) as err:
        cfg.grad_accum_steps(world)
    assert f"train.tokens_per_batch={tokens} is not a multiple of" in str(err.value)
    assert str(err.value).endswith(expected)


def test_hybrid_sharding_needs_equal_shard_groups(monkeypatch):
    from pretrain.config import DistributedConfig
    from pretrain.distributed.env import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("RANK", "0")
    cfg = DistributedConfig(strategy="fsdp", replicate_degree=4)
    # refused before joining any process group
    with pytest.raises(ValueError, match="replicate_degree=4 must divide .* WORLD_SIZE=6"):
        init_distributed(cfg, torch.device("cpu"))
