"""A run's model and optimizer into a checkpoint and back, in one process, under DDP or FSDP2.

One process and DDP (whose ranks all hold the whole model) write ``model.safetensors`` and
``optim.pt`` from rank 0. FSDP2 holds the optimizer state only as shards, so all ranks write
them together into ``dcp/`` and rank 0 adds the consolidated weights
(:mod:`pretrain.train.checkpoint`). Either kind restores under either strategy and any number
of ranks: a sharded checkpoint is resharded by DCP, a whole one is read by every rank, which
keeps its shard. Tensor parallelism splits the fused projections into one parameter per block
of rows (:mod:`pretrain.distributed.tensor_parallel`): its sharded checkpoints resume under any
tensor-parallel degree > 1, and only there (the consolidated weights are the fused model's).
Under pipeline parallelism each stage holds some of the parameters: all ranks write ``dcp/``
(the optimizer state keyed by parameter name, so stages of other sizes can read it) and rank 0
reads the stages' weights back from those files into ``model.safetensors``; such a checkpoint
resumes under any number of stages, FSDP or one process, but a pipeline resumes only sharded
checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.distributed import comm
from pretrain.distributed.parallelize import is_fsdp
from pretrain.train.checkpoint import (
    SHARDED_DIR,
    Checkpoint,
    CheckpointError,
    begin_checkpoint,
    finish_checkpoint,
    full_model_state,
    load_checkpoint,
    load_sharded,
    load_whole_into_sharded,
    save_checkpoint,
    save_sharded,
    step_dir_name,
    temp_dir,
    weights_from_sharded,
)
from pretrain.train.errors import TrainingError

# The loss module holds the model as its ``model`` attribute.
_MODEL_PREFIX = "model."


def save_run_checkpoint(
    ckpt_dir: Path,
    step: int,
    train_module: nn.Module,
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, Any],
    state: dict[str, Any],
    keep_last: int,
    is_best: bool,
    is_main: bool,
    pipelined: bool = False,
) -> Path:
    """Write ``ckpt_dir/step_N``; every rank calls this, and returns once it has its name.

    Args:
        train_module: ``loss_module`` as data parallelism wrapped it (or itself).
        loss_module: :class:`~pretrain.train.loss_module.ModelWithLoss`.
        rng: random generator states, stored in ``optim.pt``.
        state: trainer and loader state, stored in ``state.json``.
        is_main: this is rank 0, which writes the files (the only rank of one process).
        pipelined: each rank holds pipeline stages' parameters.
    """
    if is_fsdp(train_module) or pipelined:
        tmp = temp_dir(ckpt_dir, step)
        if is_main:
            begin_checkpoint(ckpt_dir, step)
        comm.barrier()
        save_sharded(tmp / SHARDED_DIR, loss_module, optimizer, by_parameter=pipelined)
        if not pipelined:
            model_state = full_model_state(loss_module, prefix=_MODEL_PREFIX)
        elif is_main:  # read back from the files just written: no stage's weights in flight
            model_state = weights_from_sharded(tmp / SHARDED_DIR, prefix=_MODEL_PREFIX)
        if is_main:
            finish_checkpoint(
                ckpt_dir, step, tmp, model_state, {"rng": rng}, state, keep_last, is_best
            )
    elif is_main:
        save_checkpoint(
            ckpt_dir,
            step,
            loss_module.model.state_dict(),
            {"optimizer": optimizer.state_dict(), "rng": rng},
            state,
            keep_last=keep_last,
            is_best=is_best,
        )
    comm.barrier()  # nobody goes on (or resumes) before the checkpoint has its name
    return ckpt_dir / step_dir_name(step)


def load_run_checkpoint(
    ckpt_dir: Path,
    train_module: nn.Module,
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    pipelined: bool = False,
) -> Checkpoint:
    """Load the latest good checkpoint's weights and optimizer state into the run's modules;
    returns the checkpoint for the rest of its state (RNG, loader, trainer counters)."""
    ckpt = _load_agreed_checkpoint(ckpt_dir)
    _check_tensor_parallel_layout(ckpt, loss_module)
    if pipelined and ckpt.sharded is None:
        raise TrainingError(
            f"{ckpt.path}: written by one process or DDP (its optimizer state numbers the "
            "whole model's parameters), this run is a pipeline; resume it as it was written, "
            "or start a new run from the weights: pretrain export --run RUN --format hf --out "
            "DIR, then --model.init_from=DIR"
        )
    if ckpt.sharded is not None:
        # Written by FSDP: DCP reshards onto this run's ranks (or one unsharded process).
        load_sharded(ckpt.sharded, loss_module, optimizer)
        return ckpt
    _check_update_rules(ckpt.optim_state["optimizer"], optimizer)
    if is_fsdp(train_module):
        # Written by one process or DDP: every rank reads the whole state, keeps its shard.
        load_whole_into_sharded(
            loss_module,
            optimizer,
            ckpt.model_state,
            ckpt.optim_state["optimizer"],
            prefix=_MODEL_PREFIX,
        )
    else:
        loss_module.model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optim_state["optimizer"])
    return ckpt


def _check_tensor_parallel_layout(ckpt: Checkpoint, loss_module: nn.Module) -> None:
    """Refuse to resume a tensor-parallel checkpoint without tensor parallelism, or another
    checkpoint with it: their parameters have other names (q, k, v apart, or fused).

    Raises:
        TrainingError: naming both degrees and the way to change: a new run from the weights.
    """
    from pretrain.distributed.tensor_parallel import RowBlocks

    saved = int(ckpt.state.get("tensor_parallel_degree", 1))
    split_now = any(isinstance(m, RowBlocks) for m in loss_module.modules())
    if (saved > 1) != split_now:
        now = "> 1" if split_now else "1"
        raise TrainingError(
            f"{ckpt.path}: written with distributed.tensor_parallel_degree={saved}, this run "
            f"has {now}; a tensor-parallel run keeps q, k, v (and gate, up) as separate "
            "parameters, so its checkpoints resume under any degree > 1 and others only "
            "without. To change, start a new run from the weights: pretrain export --run "
            "RUN --format hf --out DIR, then --model.init_from=DIR"
        )


def _check_update_rules(saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """Refuse optimizer state saved by another optimizer: Muon's groups (they name their
    ``algorithm``) and AdamW's can hold the same numbers of parameters, and
    ``load_state_dict`` compares only those.

    Raises:
        ValueError: naming both optimizers' update rules, group by group.
    """

    def rules(groups: list[dict]) -> list[str]:
        return [group.get("algorithm", "adamw") for group in groups]

    if rules(saved["param_groups"]) != rules(optimizer.param_groups):
        raise ValueError(
            f"optimizer state of groups updated by {rules(saved['param_groups'])}, this run's "
            f"by {rules(optimizer.param_groups)}"
        )


def _load_agreed_checkpoint(ckpt_dir: Path) -> Checkpoint:
    """The latest good checkpoint, the same one on every rank.

    Rank 0 alone reads every file through sha256 and falls back past bad checkpoints; the
    other ranks load the step it chose, checking only that each file is there with its size.
    Hashing on every rank would read the whole checkpoint once per rank, and ranks that judged
    separately could resume from different steps.
    """
    if not comm.active():
        return load_checkpoint(ckpt_dir, "latest", map_location="cpu", whole_weights=False)
    ckpt, chosen = None, None
    if comm.rank() == 0:
        try:
            ckpt = load_checkpoint(ckpt_dir, "latest", map_location="cpu", whole_weights=False)
            chosen = ("step", ckpt.path.name)
        except CheckpointError as e:
            chosen = ("error", str(e))
    kind, value = comm.broadcast_object(chosen)
    if kind == "error":
        raise CheckpointError(value)
    if ckpt is None:
        ckpt = load_checkpoint(
            ckpt_dir, value, map_location="cpu", whole_weights=False, hash_files=False
        )
    return ckpt
