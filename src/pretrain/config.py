"""The experiment's configs (DESIGN.md §4): ``model``, ``data``, ``objective``, ``optim``,
``train``, ``eval``, ``checkpoint``, ``distributed``, ``log`` and ``run``, each a dataclass,
the ``objective`` section in :mod:`pretrain.objective_config`, the checks that need several
keys in :mod:`pretrain.experiment_checks`.

Loading, overrides and saving are :mod:`pretrain.typed_config`'s, re-exported here: YAML onto
these dataclasses, strict ``--section.key=value`` overrides whose errors name the key, and the
resolved config saved so that it loads back equal.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

from pretrain.objective_config import ObjectiveConfig
from pretrain.typed_config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
    to_yaml,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FewShotTaskConfig",
    "LogConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "to_yaml",
]


# --- the experiment schema (DESIGN.md §4) ---------------------------------------------------


@dataclasses.dataclass
class ModelConfig:
    """Architecture: a named size of a family, with any field overridden (None = size default)."""

    family: typing.Literal["decoder", "encoder", "encoder_decoder", "xlnet"] = "decoder"
    size: str = "tiny"
    style: typing.Literal["llama", "gpt2"] | None = None
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    qk_norm: bool | None = None
    tie_embeddings: bool | None = None
    attention_backend: typing.Literal["sdpa", "flex", "auto"] | None = None
    """sdpa (dense masks), flex (FlexAttention; trains on CUDA only) or auto (flex on CUDA,
    sdpa elsewhere). None: the family's default (auto for XLNet, sdpa for the others)."""
    position_encoding: typing.Literal["txl", "rope"] | None = None
    """XLNet only: Transformer-XL relative positions (default) or RoPE."""
    n_experts: int | None = None
    """Decoder (llama style) only: E > 0 makes every block's MLP a mixture of E SwiGLU experts
    of width d_ff (Mixtral); None or 0: dense."""
    experts_per_token: int | None = None
    """With n_experts: the k experts each token is routed to (default 2)."""
    router_aux_loss_coef: float | None = None
    """With n_experts: weight of the load-balancing loss (Switch Transformer; default 0.01)."""
    init_from: str | None = None
    """Local Hugging Face checkpoint directory to continue pretraining from."""

    def overrides(self) -> dict[str, Any]:
        skip = {"family", "size", "init_from"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


@dataclasses.dataclass
class DataConfig:
    train: list[str] | str = dataclasses.field(default_factory=list)
    """Shard directories (from `pretrain data tokenize`) whose train split is blended."""
    weights: list[float] | None = None
    val: str | None = None
    """A shard directory whose val split is evaluated."""
    tokenizer: str | None = None
    verify_checksums: bool = True
    batch_worker: typing.Literal["none", "process"] = "none"
    """Where the objective turns token windows into training batches: ``none``, the training
    process (between queuing a step and reading the one before); ``process``, a worker process
    drawing a few steps ahead (``pretrain.train.batch_worker``), which pays off for costly
    objectives (span corruption, BART, UL2, XLNet) where the host limits the step. The batches
    are the same either way."""

    def __post_init__(self) -> None:
        if isinstance(self.train, str):
            self.train = [self.train]


@dataclasses.dataclass
class OptimConfig:
    name: typing.Literal["adamw", "muon"] = "adamw"
    """adamw; or muon: Muon on the hidden matrices (the blocks' linear weights), AdamW on the
    rest, both at ``lr`` and ``weight_decay`` (Muon's updates scaled to AdamW's RMS, Liu et
    al. 2025; ``pretrain.optim_muon``). Under FSDP each sharded matrix is gathered whole for
    its update (Moonlight's distributed Muon)."""
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: typing.Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    muon_momentum: float = 0.95
    """name muon: Muon's Nesterov momentum (0.95 in Jordan et al. 2024 and Liu et al. 2025)."""
    muon_precision: typing.Literal["auto", "fp32", "bf16"] = "auto"
    """name muon: the dtype of the Newton-Schulz iterations. auto: bf16 where the device
    computes it natively (CUDA; CPUs with AVX512-BF16 or AMX), as Jordan et al. 2024 and
    ``torch.optim.Muon`` run them, else fp32 (emulated bf16 is many times slower). fp32 makes
    the update depend less on the last bits of the gradient: runs on different numbers of
    ranks, which add gradients in another order, then agree more closely."""


@dataclasses.dataclass
class TrainConfig:
    seq_len: int = 256
    tokens_per_batch: int = 16384
    """Tokens per optimizer step over all ranks; gradient accumulation is derived from it."""
    micro_batch_size: int = 8
    max_steps: int = 1000
    max_minutes: float | None = None
    """Stop (with a final checkpoint) when this much wall time has passed: after the step
    queued next, as the clock is read with each step's loss sums (``Trainer.queue_step``)."""
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    compile_scope: typing.Literal["blocks", "model"] = "blocks"
    """With ``compile``: ``blocks`` compiles each block once for the whole stack (fast to
    compile), ``model`` the whole forward as one graph (``pretrain.train.compile``)."""
    compile_mode: typing.Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
    """With ``compile``: ``torch.compile``'s mode. ``reduce-overhead`` and ``max-autotune``
    replay each compiled graph on CUDA as a CUDA graph (one launch for its kernels), for steps
    that wait on the host launching them, and are refused where gradients accumulate over
    micro-batches; the ``max-autotune`` modes also time kernel variants while compiling (much
    longer compiles)."""
    activation_memory_budget: float = 1.0
    """With ``compile``: the share of the activations the compiled step may keep for its
    backward (``torch._functorch.config.activation_memory_budget``). Below 1, AOTAutograd
    recomputes the cheapest of the others in the backward. 1.0 is PyTorch's default."""
    precision: typing.Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU."""
    max_nonfinite_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    spike_sigma: float = 0.0
    """Skip the update of a step whose loss, or gradient norm before clipping, lies more than
    this many standard deviations above the mean of the last ``spike_window_steps`` steps
    (``pretrain.train.loss_spikes``; OLMo-core uses 6). 0: no spike is skipped (non-finite
    steps always are)."""
    spike_window_steps: int = 128
    """With ``spike_sigma``: how many earlier steps the mean and deviation cover; nothing is
    skipped for a spike before half of them were taken."""
    spike_rollback_after: int = 0
    """With ``spike_sigma``: once this many steps within ``spike_window_steps`` were skipped
    as spikes, restore the latest checkpoint (weights, optimizer, counters) and go on with
    the data from where it is, so the batches since that checkpoint are never trained on
    (PaLM's remedy; ``pretrain.train.rollback``). 0: never roll back."""
    max_rollbacks: int = 3
    """With ``spike_rollback_after``: stop with an error instead of a rollback past this
    many."""
    gc_every_steps: int = 50
    """Python's automatic garbage collector is off during training; generations 0 and 1 are
    collected after every this many steps instead (``pretrain.train.garbage_collection``).
    0 leaves the automatic collector on."""


@dataclasses.dataclass
class FewShotTaskConfig:
    """A few-shot task (``pretrain fewshot``; ``eval.tasks`` during training): questions from
    labeled or multiple-choice records, each after ``shots`` solved ones."""

    name: str = "task"
    train: list[str] = dataclasses.field(default_factory=list)
    """Files or directories of records to draw the solved examples from."""
    eval: list[str] = dataclasses.field(default_factory=list)
    """Files or directories of the records to score."""
    template: str = "{text}\nAnswer:"
    """An example's text around ``{text}``; the answer follows after a space."""
    answers: dict[str, str] | None = None
    """Classification: the answer word of each label (``{0: negative, 1: positive}``); None:
    the labels as written."""
    choices_key: str | None = None
    """Multiple choice: each record's choices are the list under this key and its label the
    index of the right one."""
    shots: int = 5
    max_examples: int | None = None
    """Score the first N records only; None: all."""
    seed: int = 0
    """Of the draw of solved examples."""
    text_key: str = "text"
    label_key: str = "label"

    def validate(self, where: str) -> FewShotTaskConfig:
        if not self.train or not self.eval:
            raise ConfigError(f"{where}: give the task's train and eval files")
        if self.shots < 0:
            raise ConfigError(f"{where}.shots must be >= 0, got {self.shots}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"{where}.max_examples must be >= 1, got {self.max_examples}")
        if "{text}" not in self.template:
            raise ConfigError(f"{where}.template must hold {{text}}, got {self.template!r}")
        if self.answers is not None and self.choices_key is not None:
            raise ConfigError(
                f"{where}: answers name the words of labels, choices_key a multiple-choice "
                "record's choices; give one"
            )
        if self.answers is not None:
            self.answers = {str(k): str(v) for k, v in self.answers.items()}
        return self


@dataclasses.dataclass
class EvalConfig:
    every_steps: int = 200
    max_batches: int | None = 50
    """Val batches (of ``batch_size`` windows, over all ranks) each evaluation scores; None
    evaluates the whole val split."""
    batch_size: int | None = None
    """Windows a val batch holds; None: ``train.micro_batch_size``. Set it to keep the
    evaluated tokens, and so the val losses and ``best``, the same when the micro-batch
    changes (another number of ranks, a resume with other memory)."""
    tasks: list[FewShotTaskConfig] | None = None
    """Few-shot tasks scored at each evaluation (OLMo's in-loop downstream evaluation), their
    accuracies logged with the val loss under ``downstream``."""


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int = 3


@dataclasses.dataclass
class DistributedConfig:
    strategy: typing.Literal["none", "ddp", "fsdp"] = "none"
    """none: one process; ddp: replicated weights, all-reduced gradients; fsdp: FSDP2
    (``fully_shard``) shards weights, gradients and optimizer states. Launch with torchrun."""
    backend: typing.Literal["auto", "gloo", "nccl"] = "auto"
    """auto: nccl on CUDA, gloo on CPU."""
    timeout_seconds: float = 600.0
    """A collective that waits longer than this (a rank died or hangs) fails the run."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (less memory, ~1/3 more compute)."""
    reshard_after_forward: bool = True
    """fsdp: free gathered weights after each block's forward (ZeRO-3); False keeps them until
    backward (ZeRO-2-like: more memory, one all-gather less per block)."""
    replicate_degree: int = 1
    """fsdp: 1 shards over all ranks; R > 1 is hybrid sharding (HSDP): the ranks form R groups
    of WORLD_SIZE / R consecutive ranks, each group holding one sharded copy, the groups'
    gradients all-reduced (Zhao et al. 2023, PyTorch FSDP §3.2, "hybrid sharding"). With a
    group per node the weights' all-gathers stay inside it; only gradients cross nodes."""
    tensor_parallel_degree: int = 1
    """fsdp: T > 1 splits each block's attention heads and MLP width over groups of T
    consecutive ranks (Megatron-LM's tensor parallelism, ``pretrain.distributed.tensor_parallel``;
    decoder and encoder families, dense MLPs); FSDP shards over the WORLD_SIZE / T data-parallel
    ranks. The ranks of a group read the same batches. Keep a group inside a node (fast links)."""
    sequence_parallel: bool = False
    """With tensor_parallel_degree T > 1: also split the residual stream and the blocks' norms
    along the sequence, seq_len / T positions a rank (Korthikanti et al. 2022): the
    activations outside the attention and MLP take 1 / T of the memory, for the same traffic.
    Needs train.seq_len divisible by T; no samples.txt and no eval.tasks (their lengths
    vary)."""
    context_parallel_degree: int = 1
    """ddp or fsdp: C > 1 splits each sequence over groups of C ranks (each holds 2 of its 2C
    chunks, one early and one late) and gathers the keys and values of the group in every
    attention layer (Llama 3's context parallelism, ``pretrain.distributed.
    context_parallel``): activations take 1/C of the memory, for sequences too long for one
    device. The ranks of a group read the same batches; gradients are averaged over data- and
    context-parallel ranks (FSDP shards over both). Decoder and encoder families;
    train.seq_len a multiple of 2C; with pipeline_parallel_degree (each stage's ranks), and
    with fsdp also HSDP and tensor_parallel_degree (inside each context rank); not with
    sequence_parallel."""
    pipeline_parallel_degree: int = 1
    """ddp or fsdp: P > 1 splits the decoder's blocks into P consecutive stages, one a rank, and
    runs each step's micro-batches through them on a schedule (``pretrain.distributed.
    pipeline_parallel``; GPipe, Huang et al. 2019, or 1F1B, Narayanan et al. 2021); DDP or
    FSDP2 spans each stage's WORLD_SIZE / P data-parallel ranks. Each
    step's micro-batches (train.tokens_per_batch over train.micro_batch_size) are the
    pipeline's; more of them make the idle bubble, (P - 1) / (micro-batches + P - 1), smaller.
    With fsdp, also HSDP (replicate_degree) and tensor_parallel_degree within each stage;
    context_parallel_degree splits each stage's sequences.
    Decoder family, dense MLPs; train.compile with compile_scope blocks only; no
    samples.txt or eval.tasks."""
    pipeline_schedule: typing.Literal["1f1b", "gpipe", "interleaved_1f1b", "looped_bfs"] = "1f1b"
    """1f1b: a stage runs a micro-batch's backward as soon as it can, holding at most P
    micro-batches' activations; gpipe: all forwards, then all backwards (every micro-batch's
    activations held at once); interleaved_1f1b: 1F1B over pipeline_stages_per_rank stages a
    rank, a bubble that many times smaller; looped_bfs: breadth-first over those stages (each
    runs every micro-batch it can before the rank's next). The same gradients on every
    schedule."""
    pipeline_stages_per_rank: int = 1
    """Stages a pipeline rank holds (v): 1, or 2 and more with pipeline_schedule=
    interleaved_1f1b or looped_bfs (rank r holds stages r, r + P, ...; the model needs P x v
    blocks)."""


@dataclasses.dataclass
class LogConfig:
    every_steps: int = 10
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    """Write ``plots/loss.png`` at the end of the run (rank 0). False skips it, and with it
    matplotlib's import (about 1.5 s a process on a laptop CPU)."""
    sample_tokens: int = 100
    """Tokens of the sample written to samples.txt at the end of a run (0: none)."""
    profile_steps: tuple[int, int] | None = None
    """``[FIRST, LAST]``: record those optimizer steps with torch.profiler, a Chrome trace
    and a table of the costliest ops per rank in ``run.dir/profile/``
    (``pretrain.train.step_profiler``); None: no profiling."""


@dataclasses.dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclasses.dataclass
class ExperimentConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def with_absolute_paths(self) -> ExperimentConfig:
        """A copy whose data, tokenizer and ``model.init_from`` paths are absolute: what a run
        saves, so that ``pretrain eval --run`` and the like work from any directory."""

        def absolute(path: str | None) -> str | None:
            return None if path is None else os.path.abspath(path)

        data = dataclasses.replace(
            self.data,
            train=[absolute(p) for p in self.data.train],
            val=absolute(self.data.val),
            tokenizer=absolute(self.data.tokenizer),
        )
        model = dataclasses.replace(self.model, init_from=absolute(self.model.init_from))
        return dataclasses.replace(self, data=data, model=model)

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on each rank, from the token batch size.

        ``world_size`` counts the data-parallel ranks: the ranks of a tensor-parallel group
        share their batches."""
        train = self.train
        per_micro = train.micro_batch_size * train.seq_len * world_size
        if train.tokens_per_batch % per_micro:
            fits = [
                m
                for m in range(train.micro_batch_size, 0, -1)
                if train.tokens_per_batch % (m * train.seq_len * world_size) == 0
            ]
            hint = (
                f"set train.micro_batch_size={fits[0]}"
                if fits
                else f"make train.tokens_per_batch a multiple of {per_micro}"
            )
            raise ConfigError(
                f"train.tokens_per_batch={train.tokens_per_batch} is not a multiple of "
                f"train.micro_batch_size * train.seq_len * world_size = {per_micro} "
                f"({world_size} data-parallel rank{'s' if world_size > 1 else ''}): {hint}"
            )
        return train.tokens_per_batch // per_micro

    def validate(self) -> ExperimentConfig:
        """Checks that need several keys (:mod:`pretrain.experiment_checks`); raises
        :class:`ConfigError` naming them."""
        from pretrain.experiment_checks import check_experiment

        check_experiment(self)
        return self
