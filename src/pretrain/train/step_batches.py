"""The micro-batches of each optimizer step, drawn one step ahead.

Turning token windows into ModelBatches (masks, spans, permutations) runs on the host: up to
13 ms for a 32 x 512 batch on one core (``docs/benchmarks.md``, "Host time of the
objectives"). Drawn between two steps, that time is time the GPU waits. So the trainer asks for
the next step's batches (:meth:`StepBatches.draw_ahead`) right after it has queued this step's
work on the device and before it waits for the loss. The batches and their order are exactly
those of drawing on demand; a checkpoint stores the data state from *before* the batches drawn
ahead (:meth:`StepBatches.data_state`), so resuming draws them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pretrain.data.loader import TokenBatch, TokenLoader
from pretrain.objectives.base import ModelBatch


class StepBatches:
    """``take()`` gives a step's ``per_step`` micro-batches: ``objective(next(loader), generator)``.

    Args:
        loader: the training loader (its position is part of the data state).
        objective: ``(TokenBatch, torch.Generator) -> ModelBatch``.
        generator: the objective's random generator (its state is part of the data state).
        per_step: micro-batches per optimizer step (the gradient accumulation steps).
    """

    def __init__(
        self,
        loader: TokenLoader,
        objective: Callable[[TokenBatch, torch.Generator], ModelBatch],
        generator: torch.Generator,
        per_step: int,
    ) -> None:
        self.loader = loader
        self.objective = objective
        self.generator = generator
        self.per_step = per_step
        # The next step's batches (or the error drawing them), and the data state before them.
        self._ahead: list[ModelBatch] | Exception | None = None
        self._state_before_ahead: tuple[dict[str, Any], torch.Tensor] | None = None

    def _draw(self) -> list[ModelBatch]:
        return [self.objective(next(self.loader), self.generator) for _ in range(self.per_step)]

    def draw_ahead(self) -> None:
        """Draw the next step's batches now. A failure to draw is kept and raised by the
        :meth:`take` that needs them, so the step running now still completes. Does nothing
        when the next step's batches are already drawn."""
        if self._ahead is not None:
            return
        self._state_before_ahead = self.data_state()
        try:
            self._ahead = self._draw()
        except Exception as e:  # noqa: BLE001 - re-raised by take(), one step later
            self._ahead = e

    def take(self) -> list[ModelBatch]:
        """This step's batches: those drawn ahead, or drawn now."""
        ahead, self._ahead = self._ahead, None
        if isinstance(ahead, Exception):
            raise ahead
        return self._draw() if ahead is None else ahead

    def close(self) -> None:
        """Nothing to stop (:class:`~pretrain.train.batch_worker.WorkerStepBatches` has a
        process to stop)."""

    def data_state(self) -> tuple[dict[str, Any], torch.Tensor]:
        """(loader state, generator state) after the batches taken so far, not after those
        drawn ahead: what a checkpoint stores."""
        if self._ahead is not None:
            return self._state_before_ahead
        return self.loader.state_dict(), self.generator.get_state()
