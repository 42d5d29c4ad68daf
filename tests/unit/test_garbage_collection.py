"""The training loop's garbage collection: automatic collector off, generations 0 and 1
collected on schedule, the collector's state restored afterwards."""

from __future__ import annotations

import gc

import pytest

from pretrain.train.garbage_collection import ScheduledGarbageCollection


@pytest.fixture
def collections():
    """Generations of the collections that run while the test does."""
    seen: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


def test_collects_generation_one_every_n_steps_with_the_automatic_collector_off(collections):
    assert gc.isenabled()
    with ScheduledGarbageCollection(every_steps=3) as collector:
        assert not gc.isenabled()
        for step in range(1, 8):
            collector.after_step(step)
    assert gc.isenabled() and collections == [1, 1]  # after steps 3 and 6, nothing else


def test_a_collector_turned_off_before_stays_off():
    gc.disable()
    try:
        with ScheduledGarbageCollection(every_steps=2):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_zero_leaves_the_automatic_collector_alone(monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(args))
    with ScheduledGarbageCollection(every_steps=0) as collector:
        assert gc.isenabled()
        for step in range(1, 10):
            collector.after_step(step)
    assert gc.isenabled() and calls == []
