"""StepBatches: drawing a step's micro-batches ahead changes neither the batches nor what a
checkpoint stores."""

from __future__ import annotations

import pytest
import torch

from pretrain.train.step_batches import StepBatches


class CountingLoader:
    """Yields 0, 1, 2, ...; its state is the next value."""

    def __init__(self) -> None:
        self.next_value = 0

    def __next__(self) -> int:
        self.next_value += 1
        return self.next_value - 1

    def state_dict(self) -> dict:
        return {"next": self.next_value}


def noisy(value: int, generator: torch.Generator) -> tuple[int, float]:
    """A stand-in objective: the window and a random draw."""
    return value, torch.rand((), generator=generator).item()


def source(per_step: int = 3) -> StepBatches:
    return StepBatches(CountingLoader(), noisy, torch.Generator().manual_seed(0), per_step)


def test_drawing_ahead_gives_the_batches_drawing_on_demand_gives() -> None:
    on_demand, ahead = source(), source()
    expected = [on_demand.take() for _ in range(4)]
    got = []
    for _ in range(4):
        got.append(ahead.take())
        ahead.draw_ahead()
        ahead.draw_ahead()  # a second call draws nothing more
    assert got == expected
    assert [v for v, _ in expected[1]] == [3, 4, 5]


def test_data_state_is_from_before_the_batches_drawn_ahead() -> None:
    batches = source()
    batches.take()
    loader_state, generator_state = batches.data_state()
    batches.draw_ahead()
    assert batches.data_state()[0] == loader_state == {"next": 3}
    assert torch.equal(batches.data_state()[1], generator_state)
    assert batches.loader.state_dict() == {"next": 6}  # the loader itself has moved on
    next_step = batches.take()
    assert batches.data_state()[0] == {"next": 6}  # taken: the state is after them now

    resumed = source()  # restored from the checkpoint's state: draws the same batches
    resumed.loader.next_value = loader_state["next"]
    resumed.generator.set_state(generator_state)
    assert resumed.take() == next_step


def test_a_failed_draw_ahead_is_raised_by_the_take_that_needs_it() -> None:
    def failing(value: int, generator: torch.Generator) -> tuple[int, float]:
        if value == 4:
            raise ValueError("bad window 4")
        return noisy(value, generator)

    batches = StepBatches(CountingLoader(), failing, torch.Generator().manual_seed(0), 3)
    batches.take()
    batches.draw_ahead()  # fails on window 4: kept, not raised
    with pytest.raises(ValueError, match="bad window 4"):
        batches.take()
