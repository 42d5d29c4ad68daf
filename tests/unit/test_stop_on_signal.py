"""The stop request: the first SIGINT or SIGTERM asks, the same signal delivered twice at once
(terminal and torchrun) is still one request, a later one stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from pretrain.train import interrupt
from pretrain.train.interrupt import REPEAT_WINDOW_SECONDS, StopOnSignal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_is_a_request_and_a_repeat_at_once_is_the_same_one(sig, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: clock[0])
    before = signal.getsignal(sig)
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
        clock[0] += REPEAT_WINDOW_SECONDS / 2
        os.kill(os.getpid(), sig)  # forwarded by torchrun right after the terminal's
        assert stop.requested
        clock[0] += REPEAT_WINDOW_SECONDS
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)  # asked again: stop now
    assert signal.getsignal(sig) is before  # the handlers are given back


def test_disabled_sets_no_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal(enabled=False):
        assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_it_sets_nothing_and_does_not_fail():
    import threading

    errors = []

    def run():
        try:
            with StopOnSignal() as stop:
                assert not stop.enabled
        except Exception as e:  # signal.signal raises ValueError off the main thread
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == []


def test_under_torchrun_the_launchers_death_is_a_request_to_stop(monkeypatch):
    """torchrun's workers run in their own session: a launcher killed outright forwards no
    signal, and the worker sees only that its parent changed."""
    parent = [4242]
    monkeypatch.setattr(interrupt.os, "getppid", lambda: parent[0])
    monkeypatch.setenv(interrupt.LAUNCHER_ENV, "run-1")
    with StopOnSignal() as stop:
        assert not stop.requested
        parent[0] = 1  # adopted by init
        assert stop.requested
        assert stop.signal_name == interrupt.LAUNCHER_GONE
        assert stop.signal_number == signal.SIGTERM


def test_outside_torchrun_a_new_parent_is_no_request(monkeypatch):
    """``nohup pretrain train ... &`` from a shell that then exits goes on training."""
    parent = [4242]
    monkeypatch.setattr(interrupt.os, "getppid", lambda: parent[0])
    monkeypatch.delenv(interrupt.LAUNCHER_ENV, raising=False)
    with StopOnSignal() as stop:
        parent[0] = 1
        assert not stop.requested
