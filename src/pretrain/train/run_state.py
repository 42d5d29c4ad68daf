"""A training run's whole state in and out of its checkpoints: what each save writes, what
``--resume`` restores, and what a loss-spike rollback restores.

A checkpoint holds the weights and optimizer state (:mod:`pretrain.train.run_checkpoint`),
the random generators (:mod:`pretrain.train.rng_state`), the loader's position, the trainer's
counters (:class:`~pretrain.train.state.TrainState`) and the spike window. ``--resume``
restores all of it, so the losses after it are bit-identical on CPU to an uninterrupted run's;
a rollback restores all but the data position and the generators, so the batches drawn since
the checkpoint are skipped (PaLM, Chowdhery et al. 2022, §5.1; :mod:`pretrain.train.rollback`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.config import ExperimentConfig
from pretrain.data.loader import TokenLoader
from pretrain.distributed.env import DistEnv
from pretrain.train.batch_worker import WorkerStepBatches
from pretrain.train.checkpoint import Checkpoint, CheckpointError, list_steps
from pretrain.train.errors import TrainingError
from pretrain.train.loss_spikes import SpikeDetector
from pretrain.train.metrics import MetricsWriter, NoMetrics
from pretrain.train.resume_settings import (
    configured_hyperparameters,
    data_mismatch_error,
    model_mismatch_error,
    optimizer_changes,
    optimizer_mismatch_error,
)
from pretrain.train.rng_state import restore_rng_state, rng_state
from pretrain.train.rollback import (
    rollback_limit_error,
    rollback_message,
    rollback_record,
    write_rollback_record,
)
from pretrain.train.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from pretrain.train.state import TrainState
from pretrain.train.step_batches import StepBatches

log = logging.getLogger(__name__)


class RunState:
    """Saves and restores one run's checkpoints; every rank holds one and calls each method
    at the same step (the collectives of DDP and FSDP checkpoints need all ranks)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        train_module: nn.Module,
        loss_module: nn.Module,
        optimizer: torch.optim.Optimizer,
        model_cfg: dict[str, Any],
        spikes: SpikeDetector | None,
        dist: DistEnv,
        device: torch.device,
    ):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.train_module = train_module
        self.loss_module = loss_module
        self.optimizer = optimizer
        self.model_cfg = model_cfg
        self.spikes = spikes
        self.dist = dist
        self.device = device
        self.last_saved_step: int | None = None
        """The step of the checkpoint written or loaded last (None before either)."""

    def load_latest(self) -> tuple[Checkpoint, TrainState]:
        """Load the latest good checkpoint's weights, optimizer state and spike window;
        returns it, for the rest of its state, and the trainer counters it holds."""
        if optimizer_changes(self.run_dir, self.cfg.with_absolute_paths()):
            # Refused before reading: a sharded (FSDP) checkpoint's optimizer state would
            # not say which optimizer wrote it as clearly as its param groups do.
            raise optimizer_mismatch_error(self.run_dir, self.cfg.with_absolute_paths())
        try:
            with configured_hyperparameters(self.optimizer):
                ckpt = load_run_checkpoint(
                    self.ckpt_dir,
                    self.train_module,
                    self.loss_module,
                    self.optimizer,
                    pipelined=self.dist.pp_size > 1,
                )
        except (CheckpointError, TrainingError):  # says what is wrong already
            raise
        except RuntimeError as e:  # the weights do not fit: the model settings changed
            cfg = self.cfg.with_absolute_paths()
            raise model_mismatch_error(self.run_dir, cfg, self.model_cfg, e) from e
        except ValueError as e:  # the optimizer's groups do not fit: another optimizer
            cfg = self.cfg.with_absolute_paths()
            raise optimizer_mismatch_error(self.run_dir, cfg, e) from e
        if self.spikes is not None and ckpt.state.get("spikes"):
            try:
                self.spikes.load_state_dict(ckpt.state["spikes"])
            except ValueError as e:
                log.warning("%s; the spike window starts empty", e)
        self.last_saved_step = int(ckpt.step)
        return ckpt, TrainState.from_dict(ckpt.state["trainer"])

    def resume(self, generator: torch.Generator, loader: TokenLoader) -> TrainState:
        """``--resume``: the latest checkpoint, its random generators and data position."""
        ckpt, state = self.load_latest()
        restore_rng_state(
            ckpt.optim_state["rng"],
            generator,
            self.device,
            self.cfg.train.seed,
            int(ckpt.step),
            self.dist.dp_rank,  # a tensor-parallel group's ranks (a pipeline's) draw alike
            self.dist.dp_size,
        )
        try:
            loader.load_state_dict(ckpt.state["loader"])
        except ValueError as e:
            raise data_mismatch_error(self.run_dir, self.cfg.with_absolute_paths(), e) from e
        log.info("resumed from %s (step %d)", ckpt.path, state.step)
        return state

    def save(
        self,
        state: TrainState,
        batches: StepBatches | WorkerStepBatches,
        last_val: dict[str, Any] | None,
    ) -> Path:
        """Write the checkpoint of ``state.step`` (every rank calls this; rank 0 writes the
        files). ``last_val``, if evaluated at this step, may make it the best one, which
        updates ``state.best_val_loss``."""
        val_loss = last_val["loss"] if last_val and last_val["step"] == state.step else None
        is_best = val_loss is not None and (
            state.best_val_loss is None or val_loss < state.best_val_loss
        )
        if is_best:
            state.best_val_loss = val_loss
        loader_state, objective_state = batches.data_state()
        rng = rng_state(
            objective_state, self.device, self.dist.world_size, self.dist.dp_representatives()
        )
        saved = {
            "trainer": state.to_dict(),
            "loader": loader_state,
            "spikes": None if self.spikes is None else self.spikes.state_dict(),
            "val_loss": val_loss,
            "world_size": self.dist.world_size,
            "strategy": self.cfg.distributed.strategy,
            "tensor_parallel_degree": self.dist.tp_size,
            "pipeline_parallel_degree": self.dist.pp_size,
            "context_parallel_degree": self.dist.cp_size,
        }
        path = save_run_checkpoint(
            self.ckpt_dir,
            state.step,
            self.train_module,
            self.loss_module,
            self.optimizer,
            rng,
            saved,
            self.cfg.checkpoint.keep_last,
            is_best,
            self.dist.is_main,
            pipelined=self.dist.pp_size > 1,
        )
        self.last_saved_step = state.step
        return path

    def roll_back(self, state: TrainState, metrics: MetricsWriter | NoMetrics) -> TrainState:
        """After a run of loss spikes in ``state``: the latest checkpoint's weights,
        optimizer, counters and spike window, the data position and generators left as they
        are; returns the counters to go on with (``state`` itself, its recent spikes
        forgotten, before the first checkpoint: a warning says nothing was rolled back).

        Raises:
            TrainingError: past ``train.max_rollbacks``.
        """
        train = self.cfg.train
        undone_step, undone_tokens = state.step, state.tokens_seen
        rollbacks = state.num_rollbacks + 1
        if rollbacks > train.max_rollbacks:
            raise rollback_limit_error(rollbacks - 1, state.recent_spike_steps, undone_step)
        if not list_steps(self.ckpt_dir):
            log.warning(
                "step %d: %d spikes within %d steps, but no checkpoint to roll back to yet",
                undone_step,
                len(state.recent_spike_steps),
                train.spike_window_steps,
            )
            state.recent_spike_steps.clear()
            return state
        spikes = list(state.recent_spike_steps)
        ckpt, restored = self.load_latest()
        restored.num_rollbacks = rollbacks
        metrics.drop_after(restored.step)
        record = rollback_record(ckpt.step, undone_step, undone_tokens, restored, spikes)
        write_rollback_record(self.run_dir, record, self.dist.is_main)
        log.warning(rollback_message(record, train.max_rollbacks))
        return restored
