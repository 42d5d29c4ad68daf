"""Checkpoints: atomic step directories, verified on load, with fallback to the last good one.

Layout (DESIGN.md §5)::

    checkpoints/step_000500/model.safetensors   weights (safetensors: no pickle)
                            optim.pt            optimizer state and RNG states
                                                (read with torch.load(weights_only=True))
                            state.json          trainer state, plus sha256 and size of each file
                            dcp/                FSDP runs only: the sharded model and
                                                optimizer (torch.distributed.checkpoint)
    checkpoints/latest, checkpoints/best         text files naming a step directory

A checkpoint is written into ``step_000500.tmp/``, flushed, and renamed; ``latest`` and ``best``
are replaced atomically afterwards. Loading checks every file's size and sha256 against
``state.json``; a truncated or corrupted checkpoint is refused with a warning naming the file
and the newest older good one is used instead.

A data-parallel run writes the same layout from rank 0: DDP holds the whole model on every
rank, so ``model.safetensors`` and ``optim.pt`` are those of one rank. An FSDP run's optimizer
state exists only as shards: every rank writes its shard of the model and optimizer into
``dcp/`` (:func:`save_sharded`), rank 0 adds the consolidated ``model.safetensors`` (what
``load_run``, eval and export read), ``optim.pt`` (RNG states only) and ``state.json`` listing
every file, and renames the whole directory. DCP reshards on load, so such a checkpoint
resumes on any number of ranks, or in one plain process (:func:`load_sharded`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pretrain.atomic import atomic_write_text, fsync_dir
from pretrain.data.shards import sha256_file
from pretrain.train.errors import CheckpointError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optim.pt"
STATE_FILE = "state.json"
SHARDED_DIR = "dcp"
LATEST, BEST = "latest", "best"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor] | None
    """The whole weights; None when a sharded checkpoint was loaded without them."""
    optim_state: dict[str, Any]
    state: dict[str, Any]
    sharded: Path | None = None
    """The ``dcp/`` directory of an FSDP checkpoint (model and optimizer shards), if any."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    state: dict[str, Any],
    keep_last: int,
    is_best: bool = False,
) -> Path:
    """Write ``root/step_NNNNNN`` atomically, point ``latest`` (and ``best``) at it, prune."""
    tmp = begin_checkpoint(root, step)
    return finish_checkpoint(root, step, tmp, model_state, optim_state, state, keep_last, is_best)


def temp_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / (step_dir_name(step) + ".tmp")


def begin_checkpoint(root: str | os.PathLike, step: int) -> Path:
    """Create the empty temporary directory of step ``step`` (rank 0, before any rank writes)."""
    tmp = temp_dir(root, step)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finish_checkpoint(
    root: str | os.PathLike,
    step: int,
    tmp: Path,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    state: dict[str, Any],
    keep_last: int,
    is_best: bool = False,
) -> Path:
    """Add the model, optimizer and state files to ``tmp``, hash everything in it, rename."""
    root = Path(root)
    final = root / step_dir_name(step)
    try:
        _write_step_dir(tmp, model_state, optim_state, state, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves nothing behind
        raise
    if final.exists():
        # A rerun reached the same step again: the old copy is moved aside, never deleted
        # before the new one has its name, so a crash here still leaves older steps whole.
        aside = root / (final.name + ".old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    if is_best:
        atomic_write_text(root / BEST, final.name + "\n")
    _prune(root, keep_last)
    return final


def _write_step_dir(
    tmp: Path,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    state: dict[str, Any],
    step: int,
) -> None:
    # safetensors refuses shared storage (tied weights): store each tensor once, contiguous.
    tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    save_file(_unshare(tensors), str(tmp / MODEL_FILE))
    torch.save(optim_state, tmp / OPTIM_FILE)
    files = {}
    # Everything in the directory: also the shards other ranks wrote into dcp/.
    for file in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != STATE_FILE):
        name = file.relative_to(tmp).as_posix()
        _fsync_file(file)
        files[name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    record = dict(state, step=step, files=files)
    (tmp / STATE_FILE).write_text(json.dumps(record, indent=2))
    _fsync_file(tmp / STATE_FILE)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: dict[int, str] = {}
    out = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.setdefault(ptr, name)
    return out


def _read_pointer(root: Path, name: str) -> str | None:
    path = root / name
    return path.read_text().strip() if path.exists() else None


def list_steps(root: str | os.PathLike) -> list[int]:
    """Steps of the complete-looking (renamed) checkpoint directories, ascending."""
    root = Path(root)
    if not root.exists():
        return []
    steps = [
        int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return sorted(steps)


def _prune(root: Path, keep_last: int) -> None:
    keep = set(list_steps(root)[-keep_last:]) if keep_last > 0 else set(list_steps(root))
    protected = {_read_pointer(root, BEST), _read_pointer(root, LATEST)}
    for step in list_steps(root):
        name = step_dir_name(step)
        if step not in keep and name not in protected:
            shutil.rmtree(root / name, ignore_errors=True)


def verify_checkpoint(path: Path, hash_files: bool = True) -> dict[str, Any]:
    """Return ``state.json`` of a checkpoint directory, or raise naming the bad file.

    ``hash_files=False`` checks that every file is there with its size, not its sha256: for
    ranks that load a checkpoint another rank has verified whole.
    """
    state_path = path / STATE_FILE
    if not state_path.exists():
        raise CheckpointError(f"{state_path}: missing")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{state_path}: not valid JSON ({e})") from e
    for name, meta in state.get("files", {}).items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != meta["bytes"]:
            raise CheckpointError(
                f"{file}: truncated ({file.stat().st_size} bytes, expected {meta['bytes']})"
            )
        if hash_files and sha256_file(file) != meta["sha256"]:
            raise CheckpointError(f"{file}: sha256 does not match state.json (corrupted)")
    if not {MODEL_FILE, OPTIM_FILE} <= set(state.get("files", {})):
        raise CheckpointError(f"{state_path}: does not list {MODEL_FILE} and {OPTIM_FILE}")
    return state


def resolve(root: str | os.PathLike, which: str = "latest") -> Path:
    """``latest``, ``best`` or ``step_N`` to a checkpoint directory (not yet verified)."""
    root = Path(root)
    if which in (LATEST, BEST):
        name = _read_pointer(root, which)
        if name is None:
            raise CheckpointError(f"{root / which}: no {which} checkpoint")
        return root / name
    m = re.fullmatch(r"step_?(\d+)", which)
    if not m:
        raise CheckpointError(f"checkpoint {which!r}: use latest, best or step_N")
    path = root / step_dir_name(int(m.group(1)))
    if not path.is_dir():
        steps = list_steps(root)
        there = ", ".join(f"step_{s}" for s in steps) if steps else "none"
        raise CheckpointError(
            f"{root}: no checkpoint of step {int(m.group(1))} (there are: {there})"
        )
    return path


def load_checkpoint(
    root: str | os.PathLike,
    which: str = "latest",
    map_location: str | torch.device = "cpu",
    whole_weights: bool = True,
    hash_files: bool = True,
) -> Checkpoint:
    """Load and verify a checkpoint; if ``latest`` is bad, fall back to older good ones.

    With ``whole_weights=False`` the consolidated ``model.safetensors`` of a sharded (FSDP)
    checkpoint is verified but not read into memory: a resume reads the shards, and every rank
    holding a copy of the whole model would need the model's size in host memory per rank.
    ``hash_files`` as in :func:`verify_checkpoint`.
    """
    root = Path(root)
    if which == LATEST:
        # Newest renamed directory first: a directory only gets its final name when whole, so
        # it is newer than the `latest` pointer if the process died between the two renames.
        candidates = [root / step_dir_name(s) for s in reversed(list_steps(root))]
        if not candidates:
            raise CheckpointError(f"{root}: no checkpoint to resume from")
    else:
        candidates = [resolve(root, which)]
    first = candidates[0]
    for path in candidates:
        try:
            state = verify_checkpoint(path, hash_files)
            has_shards = any(name.startswith(SHARDED_DIR + "/") for name in state["files"])
            model_state = None
            if whole_weights or not has_shards:
                model_state = load_file(str(path / MODEL_FILE), device=str(map_location))
            optim_state = torch.load(
                path / OPTIM_FILE, map_location=map_location, weights_only=True
            )
        except (CheckpointError, OSError, RuntimeError) as e:
            if which != LATEST:
                raise CheckpointError(str(e)) from e
            log.warning("refusing checkpoint %s: %s; trying the previous one", path.name, e)
            continue
        if path != first:
            log.warning("using %s instead of %s", path.name, first.name)
        sharded = path / SHARDED_DIR
        return Checkpoint(
            path,
            int(state["step"]),
            model_state,
            optim_state,
            state,
            sharded if has_shards else None,
        )
    raise CheckpointError(f"{root}: no good checkpoint found")


def save_sharded(
    path: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    by_parameter: bool = False,
) -> None:
    """Every rank writes its shard of ``module`` and ``optimizer`` into ``path`` (collective).

    Keys are parameter names (FQNs), not positions, so :func:`load_sharded` can read them
    into the same module sharded over another number of ranks, or not sharded at all. With
    ``by_parameter`` the optimizer's hyperparameters are stored per parameter too
    (``param_groups.NAME.lr``), not as one list of groups: ranks that hold different
    parameters (a pipeline's stages) each write their own.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(flatten_optimizer_state_dict=by_parameter)
    model_state, optim_state = get_state_dict(module, optimizer, options=options)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)


def load_sharded(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a :func:`save_sharded` checkpoint (either layout of its optimizer state) into
    ``module`` and ``optimizer``, resharding."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    saved_keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    # A list of groups is stored as optim.param_groups.0.lr, ...; per parameter as
    # optim.param_groups.NAME.lr
    by_parameter = not any(k.startswith("optim.param_groups.0.") for k in saved_keys)
    options = StateDictOptions(flatten_optimizer_state_dict=by_parameter)
    model_state, optim_state = get_state_dict(module, optimizer, options=options)
    target = {"model": model_state, "optim": optim_state}
    no_dist = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with warnings.catch_warnings():
        # no_dist is asked for: DCP's "assuming the intent is to load in a single process"
        # only says so again, on every resume of a sharded checkpoint in one process.
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(target, checkpoint_id=path, no_dist=no_dist)  # no_dist: one plain process
    set_state_dict(
        module,
        optimizer,
        model_state_dict=target["model"],
        optim_state_dict=target["optim"],
        options=options,
    )


def weights_from_sharded(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The whole model weights of a :func:`save_sharded` checkpoint, read back from its files
    into CPU memory by this process alone (no collective, nothing on a device), as the
    single-device model names them: what rank 0 writes as ``model.safetensors`` when no rank
    holds the whole model (a pipeline's stages). ``prefix`` is stripped from the names."""
    import torch.distributed.checkpoint as dcp

    from pretrain.distributed.tensor_parallel import fuse_row_blocks

    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in saved.items()
        if key.startswith("model.") and hasattr(meta, "size")  # tensors, not pickled values
    }
    with warnings.catch_warnings():  # one process reading files is what no_dist asks for
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=path, no_dist=True)
    weights = {key.removeprefix("model.").removeprefix(prefix): t for key, t in state.items()}
    return fuse_row_blocks(weights)  # tensor parallelism's q, k, v apart: fused again


def load_whole_into_sharded(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, torch.Tensor],
    optim_state: dict,
    prefix: str = "",
) -> None:
    """Load a checkpoint written without FSDP (whole weights, ``optimizer.state_dict()``) into
    an FSDP-sharded ``module`` and its ``optimizer``: each rank keeps its shard.

    ``optimizer.state_dict()`` numbers parameters in the order of its param groups; the
    optimizer here is built by the same code over the same module, so number ``i`` is the
    ``i``-th parameter of ``optimizer.param_groups``, and it is renamed to its FQN for
    ``set_state_dict``. ``prefix`` is prepended to the model's names (``module`` may hold the
    model as a submodule).

    Raises:
        CheckpointError: when the parameter groups do not line up (another model or optimizer).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = {id(p): name for name, p in module.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    saved_sizes = [len(g["params"]) for g in optim_state["param_groups"]]
    if sizes != saved_sizes:
        raise CheckpointError(
            f"optimizer parameter groups of sizes {saved_sizes} in the checkpoint, {sizes} in "
            "this run: not the same model or optimizer"
        )
    fqn_state = {
        "state": {ordered[int(i)]: value for i, value in optim_state["state"].items()},
        "param_groups": [
            {**group, "params": [ordered[int(i)] for i in group["params"]]}
            for group in optim_state["param_groups"]
        ],
    }
    set_state_dict(
        module,
        optimizer,
        model_state_dict={prefix + k: v for k, v in model_state.items()},
        optim_state_dict=fqn_state,
        options=StateDictOptions(full_state_dict=True),
    )


def full_model_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The whole (unsharded) weights of an FSDP ``module`` on CPU, on rank 0 (collective), as
    the single-device model names them (also under tensor parallelism).

    Other ranks get an empty dict. ``prefix`` is stripped from the names.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from pretrain.distributed.tensor_parallel import fuse_row_blocks, quiet_redistribution

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with quiet_redistribution():
        state = get_model_state_dict(module, options=options)
    # tensor parallelism's separate q, k, v (gate, up) back into the fused matrices
    return fuse_row_blocks({k.removeprefix(prefix): v for k, v in state.items()})
