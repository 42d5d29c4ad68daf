"""The experiment config's checks that need several keys (DESIGN.md §4): an objective the
model family supports, values in range, settings that only apply together. Each error is a
:class:`ConfigError` naming the key and what would fix it."""

from __future__ import annotations

import os
import typing

from pretrain.typed_config import ConfigError

if typing.TYPE_CHECKING:
    from pretrain.config import ExperimentConfig, OptimConfig
    from pretrain.objective_config import ObjectiveConfig


def check_experiment(cfg: ExperimentConfig) -> None:
    """Checks that need several keys; raises :class:`ConfigError` naming them."""
    from pretrain.objectives import check_pairing

    mixed = cfg.objective.name == "mixture"
    for i, (objective, _) in enumerate(cfg.objective.components()):
        key = f"objective.mixture[{i}]" if mixed else "objective"
        try:
            check_pairing(objective.name, cfg.model.family)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}" if mixed else str(e)) from None
        objective.validate(key)
        _check_denoiser_shapes(cfg, objective)
    if not cfg.data.train:
        raise ConfigError("data.train: give at least one shard directory")
    if cfg.data.weights is not None and len(cfg.data.weights) != len(cfg.data.train):
        raise ConfigError(
            f"data.weights has {len(cfg.data.weights)} entries for "
            f"{len(cfg.data.train)} data.train directories"
        )
    positive = {
        "train.seq_len": cfg.train.seq_len,
        "train.micro_batch_size": cfg.train.micro_batch_size,
        "train.max_steps": cfg.train.max_steps,
        "train.tokens_per_batch": cfg.train.tokens_per_batch,
        "train.max_nonfinite_steps": cfg.train.max_nonfinite_steps,
        "log.every_steps": cfg.log.every_steps,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
    }
    if cfg.eval.max_batches is not None:
        positive["eval.max_batches"] = cfg.eval.max_batches
    for i, task in enumerate(cfg.eval.tasks or []):
        task.validate(f"eval.tasks[{i}]")
    names = [task.name for task in cfg.eval.tasks or []]
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.tasks: two tasks have one name: {names}")
    if names and not cfg.data.val:
        raise ConfigError("eval.tasks are scored with the val loss: set data.val too")
    if names and cfg.model.family not in ("decoder", "encoder_decoder"):
        raise ConfigError(
            f"eval.tasks: few-shot scoring needs a model that writes text (a decoder or an "
            f"encoder-decoder), model.family is {cfg.model.family!r}"
        )
    if cfg.eval.batch_size is not None:
        positive["eval.batch_size"] = cfg.eval.batch_size
    non_negative = {
        "eval.every_steps": cfg.eval.every_steps,
        "checkpoint.every_steps": cfg.checkpoint.every_steps,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "train.gc_every_steps": cfg.train.gc_every_steps,
        "train.spike_sigma": cfg.train.spike_sigma,
        "train.spike_rollback_after": cfg.train.spike_rollback_after,
        "train.max_rollbacks": cfg.train.max_rollbacks,
        "optim.grad_clip": cfg.optim.grad_clip,
        "optim.weight_decay": cfg.optim.weight_decay,
        "objective.z_loss": cfg.objective.z_loss,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    profile = cfg.log.profile_steps
    if profile is not None and not 1 <= profile[0] <= profile[1]:
        raise ConfigError(
            f"log.profile_steps must be [FIRST, LAST] with 1 <= FIRST <= LAST, got {list(profile)}"
        )
    if cfg.train.spike_window_steps < 2:
        raise ConfigError(
            f"train.spike_window_steps must be >= 2, got {cfg.train.spike_window_steps}"
        )
    if cfg.train.spike_rollback_after and not cfg.train.spike_sigma:
        raise ConfigError(
            "train.spike_rollback_after counts the steps skipped as spikes: set "
            "train.spike_sigma too (OLMo-core uses 6)"
        )
    if cfg.train.spike_rollback_after and not cfg.checkpoint.every_steps:
        raise ConfigError(
            "train.spike_rollback_after restores the latest checkpoint: set "
            "checkpoint.every_steps so that there is one"
        )
    budget = cfg.train.activation_memory_budget
    if not 0 < budget <= 1:
        raise ConfigError(f"train.activation_memory_budget must be in (0, 1], got {budget}")
    if cfg.train.compile_mode != "default" and not cfg.train.compile:
        raise ConfigError(
            f"train.compile_mode={cfg.train.compile_mode} applies to compiled steps only; "
            "set train.compile=true or leave it at default"
        )
    if budget < 1 and not cfg.train.compile:
        raise ConfigError(
            "train.activation_memory_budget applies to compiled steps only; set "
            "train.compile=true or leave it at 1.0"
        )
    _check_optim(cfg.optim)
    if cfg.train.max_minutes is not None and cfg.train.max_minutes <= 0:
        raise ConfigError(f"train.max_minutes must be > 0, got {cfg.train.max_minutes}")
    if cfg.train.device != "auto":
        import torch

        try:
            torch.device(cfg.train.device)
        except RuntimeError:
            raise ConfigError(
                f"train.device must be 'auto' or a torch device such as 'cpu', 'cuda' or "
                f"'cuda:1', got {cfg.train.device!r}"
            ) from None
    replicas = cfg.distributed.replicate_degree
    if replicas < 1:
        raise ConfigError(f"distributed.replicate_degree must be >= 1, got {replicas}")
    if replicas > 1 and cfg.distributed.strategy != "fsdp":
        raise ConfigError(
            f"distributed.replicate_degree={replicas} replicates FSDP's shard groups "
            f"(HSDP): set distributed.strategy=fsdp (it is {cfg.distributed.strategy!r})"
        )
    _check_pipeline_parallel(cfg)
    _check_tensor_parallel(cfg)
    _check_context_parallel(cfg)
    if cfg.distributed.timeout_seconds <= 0:
        raise ConfigError(
            f"distributed.timeout_seconds must be > 0, got {cfg.distributed.timeout_seconds}"
        )
    shape_keys = [k for k in cfg.model.overrides() if k != "attention_backend"]
    if cfg.model.init_from and shape_keys:
        raise ConfigError(
            "model.init_from takes the architecture from the checkpoint; remove "
            + ", ".join(f"model.{k}" for k in shape_keys)
        )
    # torchrun's WORLD_SIZE, so the batch is checked (and a fix suggested) for this launch
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = cfg.distributed
    model_parallel = (
        dist.tensor_parallel_degree * dist.pipeline_parallel_degree * dist.context_parallel_degree
    )
    micro_batches = cfg.grad_accum_steps(max(world // model_parallel, 1))
    _check_pipeline_micro_batches(cfg, micro_batches)


def _check_tensor_parallel(cfg: ExperimentConfig) -> None:
    degree = cfg.distributed.tensor_parallel_degree
    if degree < 1:
        raise ConfigError(f"distributed.tensor_parallel_degree must be >= 1, got {degree}")
    if cfg.distributed.sequence_parallel:
        if degree == 1:
            raise ConfigError(
                "distributed.sequence_parallel splits each tensor-parallel group's sequence: "
                "set distributed.tensor_parallel_degree > 1"
            )
        if cfg.train.seq_len % degree:
            raise ConfigError(
                f"distributed.sequence_parallel: train.seq_len={cfg.train.seq_len} must be a "
                f"multiple of distributed.tensor_parallel_degree={degree}"
            )
        if cfg.eval.tasks:
            raise ConfigError(
                "distributed.sequence_parallel needs sequences of a length the ranks share "
                "evenly; eval.tasks scores prompts of any length: score them with pretrain "
                "fewshot on a checkpoint, or set distributed.sequence_parallel=false"
            )
    if degree == 1:
        return
    if cfg.distributed.strategy != "fsdp":
        raise ConfigError(
            f"distributed.tensor_parallel_degree={degree} composes with FSDP: set "
            f"distributed.strategy=fsdp (it is {cfg.distributed.strategy!r}; with as many "
            "ranks as the degree, FSDP has one data-parallel rank and shards nothing)"
        )
    if cfg.model.family not in ("decoder", "encoder"):
        raise ConfigError(
            f"distributed.tensor_parallel_degree={degree}: model.family={cfg.model.family} is "
            "not supported (decoder and encoder are); use distributed.tensor_parallel_degree=1"
        )
    if cfg.model.n_experts:
        raise ConfigError(
            f"distributed.tensor_parallel_degree={degree} splits dense MLPs; "
            f"model.n_experts={cfg.model.n_experts} (a mixture of experts) is not supported"
        )


def _model_parallelism(
    cfg: ExperimentConfig, name: str, sharing: str, families: tuple[str, ...] = ("decoder",)
) -> str | None:
    """The checks a parallelism ``distributed.NAME`` over DDP or FSDP starts with: a degree of
    at least 1; above 1, a strategy (``sharing`` says what it shares) and one of ``families``.
    Returns ``distributed.NAME=DEGREE`` to name in further errors, None at degree 1."""
    degree = getattr(cfg.distributed, name)
    if degree < 1:
        raise ConfigError(f"distributed.{name} must be >= 1, got {degree}")
    if degree == 1:
        return None
    key = f"distributed.{name}={degree}"
    if cfg.distributed.strategy == "none":
        raise ConfigError(f"{key}: set distributed.strategy=ddp or fsdp, {sharing}")
    if cfg.model.family not in families:
        supported = " and ".join(families) + (" are" if len(families) > 1 else " is")
        raise ConfigError(
            f"{key}: model.family={cfg.model.family} is not supported ({supported}); use "
            f"distributed.{name}=1"
        )
    return key


def _check_context_parallel(cfg: ExperimentConfig) -> None:
    sharing = "how the ranks share the weights (launch with torchrun)"
    key = _model_parallelism(cfg, "context_parallel_degree", sharing, ("decoder", "encoder"))
    if key is None:
        return
    dist = cfg.distributed
    degree = dist.context_parallel_degree
    if cfg.train.seq_len % (2 * degree):
        raise ConfigError(
            f"{key} cuts each sequence into {2 * degree} equal chunks: train.seq_len="
            f"{cfg.train.seq_len} is not a multiple of {2 * degree}"
        )
    if dist.sequence_parallel:
        raise ConfigError(f"{key} does not compose with distributed.sequence_parallel: unset it")


# Schedules over several stages a rank (rank r holds stages r, r + P, ...).
LOOPED_SCHEDULES = ("interleaved_1f1b", "looped_bfs")


def _check_pipeline_parallel(cfg: ExperimentConfig) -> None:
    sharing = (
        "how each stage's data-parallel ranks share it (with as many ranks as stages there is "
        "no data parallelism)"
    )
    key = _model_parallelism(cfg, "pipeline_parallel_degree", sharing)
    if key is None:
        return
    dist = cfg.distributed
    if cfg.model.n_experts:
        raise ConfigError(
            f"{key} runs dense decoders; model.n_experts={cfg.model.n_experts} (a mixture of "
            "experts' balancing loss spans every stage) is not supported"
        )
    stages = dist.pipeline_stages_per_rank
    looped = dist.pipeline_schedule in LOOPED_SCHEDULES
    if stages < 1 or (stages > 1) != looped:
        raise ConfigError(
            f"distributed.pipeline_stages_per_rank={stages}: use 2 or more with "
            f"distributed.pipeline_schedule={'|'.join(LOOPED_SCHEDULES)} (several stages a "
            f"rank), else 1 (the schedule is {dist.pipeline_schedule})"
        )
    if cfg.train.compile and cfg.train.compile_scope != "blocks":
        raise ConfigError(
            f"{key}: train.compile_scope={cfg.train.compile_scope} compiles the whole model's "
            "forward, which no stage runs; use train.compile_scope=blocks (each block "
            "compiled, as each stage runs them)"
        )
    if cfg.eval.tasks:
        raise ConfigError(
            f"{key}: eval.tasks is not supported with pipeline parallelism (each rank holds "
            "a few blocks, no model to score prompts with); score them with pretrain fewshot "
            "on a checkpoint, or unset eval.tasks"
        )


def _check_pipeline_micro_batches(cfg: ExperimentConfig, micro_batches: int) -> None:
    """1F1B starts each of a step's micro-batches down the pipeline before the first comes
    back: it needs at least as many as stages. Interleaved 1F1B runs them in equal rounds of
    about one per pipeline rank (PyTorch's ``ScheduleInterleaved1F1B``)."""
    degree = cfg.distributed.pipeline_parallel_degree
    schedule = cfg.distributed.pipeline_schedule
    rounds = max(1, micro_batches // degree)
    if degree > 1 and schedule == "interleaved_1f1b" and micro_batches % rounds:
        raise ConfigError(
            f"distributed.pipeline_schedule={schedule} runs a step's micro-batches in "
            f"{rounds} equal rounds (one per distributed.pipeline_parallel_degree={degree} "
            f"of them): {micro_batches} micro-batches (train.tokens_per_batch / (train."
            f"micro_batch_size * train.seq_len * data-parallel ranks)) do not split so; make "
            f"them a multiple of {degree} with train.micro_batch_size or train.tokens_per_batch"
        )
    if degree > 1 and schedule == "1f1b" and micro_batches < degree:
        raise ConfigError(
            f"distributed.pipeline_schedule=1f1b needs at least as many micro-batches a step "
            f"(train.tokens_per_batch / (train.micro_batch_size * train.seq_len * data-"
            f"parallel ranks) = {micro_batches}) as stages (distributed.pipeline_parallel_"
            f"degree={degree}): lower train.micro_batch_size, raise train.tokens_per_batch, "
            "or set distributed.pipeline_schedule=gpipe"
        )


def _check_optim(optim: OptimConfig) -> None:
    if not 0.0 <= optim.muon_momentum < 1.0:
        raise ConfigError(f"optim.muon_momentum must be in [0, 1), got {optim.muon_momentum}")
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {optim.lr}")
    if optim.eps <= 0:
        raise ConfigError(f"optim.eps must be > 0, got {optim.eps}")
    for i, beta in enumerate(optim.betas):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"optim.betas[{i}] must be in [0, 1), got {beta}")
    for key in ("min_lr_ratio", "decay_fraction"):
        value = getattr(optim, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"optim.{key} must be in [0, 1], got {value}")


def _check_denoiser_shapes(cfg: ExperimentConfig, obj: ObjectiveConfig) -> None:
    """BART and UL2 need room for their framing; UL2 must not run out of sentinels."""
    if obj.name == "bart" and cfg.train.seq_len < 4:
        raise ConfigError(f"train.seq_len must be >= 4 for BART, got {cfg.train.seq_len}")
    if obj.name != "ul2":
        return
    from pretrain.objectives.ul2_denoisers import plan_ul2, resolve_preset
    from pretrain.tokenizer import NUM_SENTINELS

    denoisers, rates = resolve_preset(obj.ul2_preset, obj.ul2_rates, obj.ul2_prefix_noise_density)
    try:
        plan_ul2(denoisers, rates, cfg.train.seq_len, cfg.model.family, NUM_SENTINELS)
    except ValueError as e:
        raise ConfigError(str(e)) from None
