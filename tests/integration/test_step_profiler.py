"""``log.profile_steps`` records the chosen steps with torch.profiler and changes nothing else."""

from __future__ import annotations

import json

import pytest

from pretrain.config import ConfigError
from pretrain.train.trainer import Trainer
from tests.helpers import losses
from tests.integration.test_train import _config


def test_the_chosen_steps_are_recorded_and_the_losses_stay_the_same(
    shards_dir, tokenizer_dir, tmp_path
):
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    settings = dict(train__max_steps=5, eval__every_steps=0, checkpoint__every_steps=0)
    Trainer(_config(shards_dir, tokenizer_dir, plain, **settings)).fit()
    Trainer(
        _config(shards_dir, tokenizer_dir, profiled, log__profile_steps="[2,3]", **settings)
    ).fit()
    assert losses(profiled) == losses(plain)
    stem = profiled / "profile" / "rank0_steps_2-3"
    events = json.loads(stem.with_suffix(".json").read_text())["traceEvents"]
    labels = {e["name"] for e in events if e.get("name", "").startswith("step ")}
    assert labels == {"step 2", "step 3"}
    table = stem.with_suffix(".txt").read_text()
    assert "aten::mm" in table or "aten::addmm" in table  # the model's matmuls were recorded
    assert sorted(p.name for p in (profiled / "profile").iterdir()) == [
        "rank0_steps_2-3.json", "rank0_steps_2-3.txt"
    ]  # fmt: skip


def test_a_range_past_the_end_is_written_when_the_run_ends(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, train__max_steps=3, log__profile_steps="[3,9]")
    Trainer(cfg).fit()
    events = json.loads((run / "profile" / "rank0_steps_3-9.json").read_text())["traceEvents"]
    assert {e["name"] for e in events if e.get("name", "").startswith("step ")} == {"step 3"}


def test_a_range_after_the_end_says_nothing_is_profiled(
    shards_dir, tokenizer_dir, tmp_path, caplog
):
    run = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, run, train__max_steps=2, log__profile_steps="[5,9]")
    with caplog.at_level("WARNING", logger="pretrain.train.trainer"):
        Trainer(cfg).fit()
    assert "log.profile_steps=[5, 9] starts after train.max_steps=2: nothing" in caplog.text
    assert not (run / "profile").exists()


@pytest.mark.parametrize("steps", ["[0,2]", "[5,4]"])
def test_a_bad_range_is_refused_naming_the_key(shards_dir, tokenizer_dir, tmp_path, steps):
    with pytest.raises(ConfigError, match=r"log.profile_steps must be \[FIRST, LAST\]"):
        _config(shards_dir, tokenizer_dir, tmp_path, log__profile_steps=steps).validate()
