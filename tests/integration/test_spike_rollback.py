"""A run of loss spikes rolls the run back to its latest checkpoint and skips the data since
(``train.spike_rollback_after``, PaLM's remedy), and a resumed run rolls back the same way."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from pretrain import losses as losses_mod
from pretrain.train.checkpoint import list_steps
from pretrain.train.metrics import read_metrics
from pretrain.train.rollback import ROLLBACKS_FILE
from pretrain.train.trainer import Trainer, TrainingError
from tests.helpers import losses
from tests.integration.test_train import _config

SETTINGS = {
    "train__spike_sigma": 6,
    "train__spike_window_steps": 8,  # decides from step 5 on
    "train__spike_rollback_after": 2,
    "train__max_steps": 16,
    "eval__every_steps": 0,
    "checkpoint__every_steps": 4,
    "checkpoint__keep_last": 8,
    "log__sample_tokens": 0,
}
STEP_TOKENS = 256


def _key(labels) -> tuple[int, ...]:
    return tuple(labels.reshape(-1)[:24].tolist())


def _watch_batches(monkeypatch, spiking: dict[tuple[int, ...], float]) -> list[list[tuple]]:
    """Multiply the training loss of every micro-batch whose labels are a key of ``spiking``
    by its value (the spikes follow the data, not the step number); returns the keys of each
    queued step's micro-batches, in the order the steps were queued."""
    real_ce, real_queue = losses_mod.cross_entropy_sum, Trainer.queue_step
    queued: list[list[tuple]] = []

    def queue_step(self):
        queued.append([])
        return real_queue(self)

    def spiky_ce(hidden, labels, *args, **kwargs):
        total, count, ce = real_ce(hidden, labels, *args, **kwargs)
        if not hidden.requires_grad:  # evaluation
            return total, count, ce
        queued[-1].append(_key(labels))
        factor = spiking.get(_key(labels), 1.0)
        if factor != 1.0:
            return total * factor, count, ce * factor
        return total, count, ce

    monkeypatch.setattr(Trainer, "queue_step", queue_step)
    monkeypatch.setattr(losses_mod, "cross_entropy_sum", spiky_ce)
    return queued


@pytest.fixture(scope="module")
def data_of_steps(shards_dir, tokenizer_dir, tmp_path_factory):
    """The micro-batch keys of steps 1..24 of a run without spikes (index 0 is step 1)."""
    settings = {**SETTINGS, "train__max_steps": 24, "train__spike_rollback_after": 0}
    run = tmp_path_factory.mktemp("plain")
    with pytest.MonkeyPatch.context() as monkeypatch:
        queued = _watch_batches(monkeypatch, {})
        Trainer(_config(shards_dir, tokenizer_dir, run, **settings)).fit()
    return queued


def _spikes_at(data_of_steps, factors: dict[int, float]) -> dict[tuple, float]:
    """The batches of the given steps of the plain run, with their loss factors."""
    return {key: factor for step, factor in factors.items() for key in data_of_steps[step - 1]}


# A skipped spike joins the window, so the next one must stand out from it too: with a
# window of 8 steps a second 100x loss would lie within 6 deviations, a 10,000x one does not.
TWO_SPIKES = {10: 100.0, 11: 1e4}


@pytest.fixture(scope="module")
def rolled_back(data_of_steps, shards_dir, tokenizer_dir, tmp_path_factory):
    """A run with :data:`TWO_SPIKES`: (run dir, keys of its queued steps, summary, log)."""
    run = tmp_path_factory.mktemp("rolled_back")
    log_lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: log_lines.append(record.getMessage())
    trainer_log = logging.getLogger("pretrain.train")
    trainer_log.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            queued = _watch_batches(monkeypatch, _spikes_at(data_of_steps, TWO_SPIKES))
            summary = Trainer(_config(shards_dir, tokenizer_dir, run, **SETTINGS)).fit()
    finally:
        trainer_log.removeHandler(handler)
    return run, queued, summary, "\n".join(log_lines)


def test_two_spikes_roll_back_to_step_8_and_the_next_steps_train_on_later_data(
    rolled_back, data_of_steps, shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    run, queued, summary, log_text = rolled_back
    # Steps 10 and 11 spiked; read while step 12 ran, so 12 is undone as well. Step 13's
    # batches were drawn ahead: the rolled-back run's step 9 trains on them.
    assert queued[:12] == data_of_steps[:12]
    assert queued[12:] == data_of_steps[12:20]
    assert summary["step"] == 16 and summary["rollbacks"] == 1
    assert summary["tokens"] == 16 * STEP_TOKENS  # the undone steps' tokens are not counted
    (line,) = (run / ROLLBACKS_FILE).read_text().splitlines()
    assert json.loads(line) == {
        "step": 8,
        "undone_step": 12,
        "spike_steps": [10, 11],
        "tokens_skipped": 4 * STEP_TOKENS,
        "rollback": 1,
    }
    assert "rolled back from step 12 to the checkpoint of step 8" in log_text
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 17))  # the undone lines dropped
    assert [r["rollbacks"] for r in records] == [0] * 8 + [1] * 8
    assert [r["spike_steps"] for r in records] == [0] * 16  # counters of step 8's checkpoint

    # The same as restoring step 8's checkpoint by hand and skipping four steps of data.
    by_hand = tmp_path / "by_hand"
    shutil.copytree(run, by_hand)
    for step in list_steps(by_hand / "checkpoints"):
        if step > 8:
            shutil.rmtree(by_hand / "checkpoints" / f"step_{step:06d}")
    (by_hand / "checkpoints" / "latest").write_text("step_000008\n")
    (by_hand / ROLLBACKS_FILE).unlink()
    monkeypatch.undo()
    trainer = Trainer(_config(shards_dir, tokenizer_dir, by_hand, **SETTINGS), resume=True)
    for _ in range(4):
        trainer.batches.take()
    trainer.fit()
    assert losses(by_hand) == losses(run)
    for step in (12, 16):  # the spike window and the counters went back to step 8's too
        ours, theirs = (_state(r / "checkpoints" / f"step_{step:06d}") for r in (run, by_hand))
        assert ours["spikes"] == theirs["spikes"]
        assert ours["trainer"] == {**theirs["trainer"], "num_rollbacks": 1}


def _state(checkpoint) -> dict:
    state = json.loads((checkpoint / "state.json").read_text())
    del state["trainer"]["elapsed_seconds"]
    return state


def _crash_at_call(monkeypatch, call: int):
    """Make the ``call``-th :meth:`Trainer.queue_step` of this process raise."""
    real_queue = Trainer.queue_step
    calls = {"n": 0}

    def crashing(self):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("simulated crash")
        return real_queue(self)

    monkeypatch.setattr(Trainer, "queue_step", crashing)


@pytest.mark.parametrize(
    "crash_call, resumed_from",
    [(11, 8), (18, 12)],  # queuing step 11 before the rollback; step 14 after it
)
def test_a_resumed_run_rolls_back_as_the_straight_one_did(
    crash_call,
    resumed_from,
    rolled_back,
    data_of_steps,
    shards_dir,
    tokenizer_dir,
    tmp_path,
    monkeypatch,
):
    spiking = _spikes_at(data_of_steps, TWO_SPIKES)
    straight, crashed = rolled_back[0], tmp_path / "crashed"
    _watch_batches(monkeypatch, spiking)
    _crash_at_call(monkeypatch, crash_call)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(shards_dir, tokenizer_dir, crashed, **SETTINGS)).fit()
    assert list_steps(crashed / "checkpoints")[-1] == resumed_from
    monkeypatch.undo()
    _watch_batches(monkeypatch, spiking)
    trainer = Trainer(_config(shards_dir, tokenizer_dir, crashed, **SETTINGS), resume=True)
    assert trainer.state.step == resumed_from
    summary = trainer.fit()
    assert losses(crashed) == losses(straight)
    assert summary["rollbacks"] == 1


def test_spikes_after_max_rollbacks_stop_the_run(
    data_of_steps, shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """Every step's data from step 10 on spikes: a rollback at the first spike (10, while
    11 runs) goes back to step 8, whose next step trains on step 12's spiking data."""
    _watch_batches(monkeypatch, _spikes_at(data_of_steps, dict.fromkeys(range(10, 25), 100.0)))
    settings = {**SETTINGS, "train__spike_rollback_after": 1, "train__max_rollbacks": 1}
    cfg = _config(shards_dir, tokenizer_dir, tmp_path / "run", **settings)
    with pytest.raises(TrainingError, match=r"again after 1 rollbacks \(train.max_rollbacks"):
        Trainer(cfg).fit()
    (line,) = (tmp_path / "run" / ROLLBACKS_FILE).read_text().splitlines()
    assert json.loads(line)["undone_step"] == 11


def test_spikes_before_the_first_checkpoint_are_skipped_without_a_rollback(
    data_of_steps, shards_dir, tokenizer_dir, tmp_path, monkeypatch, caplog
):
    _watch_batches(monkeypatch, _spikes_at(data_of_steps, {6: 100.0, 7: 1e4}))
    settings = {**SETTINGS, "checkpoint__every_steps": 100}
    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="pretrain.train"):
        summary = Trainer(_config(shards_dir, tokenizer_dir, run, **settings)).fit()
    assert "step 8: 2 spikes within 8 steps, but no checkpoint to roll back to yet" in caplog.text
    assert summary["step"] == 16 and summary["rollbacks"] == 0 and summary["spike_steps"] == 2
    assert not (run / ROLLBACKS_FILE).exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"train__spike_sigma": 0}, "train.spike_rollback_after counts the steps skipped"),
        ({"checkpoint__every_steps": 0}, "restores the latest checkpoint: set checkpoint.every"),
        ({"train__spike_rollback_after": -1}, "train.spike_rollback_after must be >= 0"),
        ({"train__max_rollbacks": -1}, "train.max_rollbacks must be >= 0"),
    ],
)
def test_bad_rollback_settings_name_the_key(shards_dir, tokenizer_dir, tmp_path, settings, message):
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _config(shards_dir, tokenizer_dir, tmp_path, **{**SETTINGS, **settings}).validate()


def test_spikes_on_both_sides_of_a_checkpoint_still_roll_back_after_a_resume(
    data_of_steps, shards_dir, tokenizer_dir, tmp_path, monkeypatch
):
    """Step 7's spike is in step 8's checkpoint: resumed from it, step 10's spike is the
    second within the window, as in the straight run."""
    spiking = _spikes_at(data_of_steps, {7: 100.0, 10: 1e4})
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _watch_batches(monkeypatch, spiking)
    Trainer(_config(shards_dir, tokenizer_dir, straight, **SETTINGS)).fit()
    assert json.loads((straight / ROLLBACKS_FILE).read_text())["spike_steps"] == [7, 10]
    _crash_at_call(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(shards_dir, tokenizer_dir, crashed, **SETTINGS)).fit()
    monkeypatch.undo()
    _watch_batches(monkeypatch, spiking)
    trainer = Trainer(_config(shards_dir, tokenizer_dir, crashed, **SETTINGS), resume=True)
    assert trainer.state.step == 8 and trainer.state.recent_spike_steps == [7]
    trainer.fit()
    assert losses(crashed) == losses(straight)
