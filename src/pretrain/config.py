"""The experiment's configs (DESIGN.md §4): ``model``, ``data``, ``objective``, ``optim``,
``train``, ``eval``, ``checkpoint``, ``distributed``, ``log`` and ``run``, each a dataclass,
with the checks that need several keys.

Loading, overrides and saving are :mod:`pretrain.typed_config`'s, re-exported here: YAML onto
these dataclasses, strict ``--section.key=value`` overrides whose errors name the key, and the
resolved config saved so that it loads back equal.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

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
class ObjectiveConfig:
    name: str = "clm"
    document_masking: bool = True
    z_loss: float = 0.0
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    exact_count: bool = False
    """MLM: BERT's exact count per sequence instead of an independent draw per token."""
    mlm_max_predictions: int | None = None
    """MLM with ``exact_count``: at most this many selected tokens per sequence (BERT's
    ``max_predictions_per_seq``, 20 at 128 tokens); None: no cap."""
    whole_word_masking: bool = False
    """MLM: select whole words (stretches between whitespace, ``objectives/words.py``)."""
    noise_density: float = 0.15
    """Span corruption: share of tokens in noise spans (T5: 0.15)."""
    mean_noise_span_length: float = 3.0
    prefix_noise_density: float = 0.5
    """Prefix LM: the prefix is uniform on [round((1 - 2 d)(L - 1)), L - 1] tokens."""
    bart_mask_ratio: float = 0.3
    """BART text infilling: share of words hidden in Poisson-length spans (BART-large: 0.3)."""
    bart_random_ratio: float = 0.1
    """BART: share of the mask tokens it writes that are random tokens instead (BART-large: 0.1)."""
    bart_poisson_lambda: float = 3.0
    """BART: mean span length of text infilling (paper: 3; BART-large's fairseq args: 3.5)."""
    bart_token_mask_ratio: float = 0.0
    """BART token masking: share of tokens replaced by the mask token."""
    bart_deletion_ratio: float = 0.0
    """BART token deletion: share of tokens removed."""
    bart_insert_ratio: float = 0.0
    """BART: mask tokens inserted, as a share of the sequence length (fairseq --insert)."""
    bart_permute_sentence_ratio: float = 1.0
    """BART sentence permutation: share of sentences shuffled (BART-large: all of them)."""
    bart_rotate_ratio: float = 0.0
    """BART document rotation: probability that a sequence is rotated (BART-large: 0)."""
    ul2_preset: typing.Literal["uniform", "upalm"] = "uniform"
    """UL2: the 7 denoisers of Tay et al. 2022 at equal rates, or U-PaLM's UL2R mixture
    (50% S, 25% R(3, 0.15), 12.5% X(32, 0.15), 12.5% X(3, 0.5))."""
    ul2_rates: list[float] | None = None
    """UL2: one rate per denoiser of the preset, in its order (uniform: R(3,0.15) R(8,0.15)
    X(3,0.5) X(8,0.5) X(64,0.15) X(64,0.5) S; upalm: S R(3,0.15) X(32,0.15) X(3,0.5))."""
    plm_rule: typing.Literal["xlnet", "hf"] = "xlnet"
    """Permutation LM: the original XLNet code's target and perm-mask rule, or HF's collator's."""
    plm_partial_k: float = 6.0
    """Permutation LM: predict about 1/K of the tokens, the last of the factorization order."""
    plm_max_span: int = 5
    """Permutation LM: longest target span (XLNet's ``max_span_length``)."""
    mixture: list[dict[str, typing.Any]] | None = None
    """name 'mixture': the components, each ``{name: ..., weight: ..., <objective key>: ...}``;
    keys a component does not set come from this section (e.g. ``noise_density``)."""
    mixture_granularity: typing.Literal["example", "batch"] = "example"
    """Mixture: draw a component for every example, or one for every batch."""
    ul2_prefix_noise_density: float | None = None
    """UL2: the S denoiser's prefix-LM density (None: the preset's, 0.25 uniform, 0.5 upalm)."""

    def components(self) -> list[tuple[ObjectiveConfig, float]]:
        """The mixture's components as full configs with their weights.

        Raises:
            ConfigError: naming ``objective.mixture[i]`` and the bad key.
        """
        if self.name != "mixture":
            return [(self, 1.0)]
        if not self.mixture:
            raise ConfigError("objective.mixture: give a list of {name, weight} components")
        base = {k: v for k, v in to_dict(self).items() if k not in ("mixture", "name")}
        out = []
        for i, item in enumerate(self.mixture):
            where = f"objective.mixture[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError(f"{where}: give a mapping with a 'name' and a 'weight'")
            if item["name"] == "mixture" or "mixture" in item:
                raise ConfigError(f"{where}: a mixture cannot contain a mixture")
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"{where}.weight must be a number > 0, got {weight!r}")
            fields = {**base, **{k: v for k, v in item.items() if k != "weight"}}
            out.append((from_dict(ObjectiveConfig, fields, where), float(weight)))
        return out

    def validate(self, where: str = "objective") -> ObjectiveConfig:
        """Range checks of the objective's settings; raises :class:`ConfigError` naming the key
        (under ``where``: ``objective``, or ``objective.mixture[i]`` for a component)."""
        if self.name == "mixture":
            for i, (component, _) in enumerate(self.components()):
                component.validate(f"objective.mixture[{i}]")
            return self
        if self.mixture is not None:
            raise ConfigError(
                f"{where}.mixture applies with objective.name=mixture only (the name is "
                f"{self.name!r}); set objective.name=mixture or leave objective.mixture out"
            )
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(
                f"{where}.mlm_probability must be in (0, 1], got {self.mlm_probability}"
            )
        for name in ("mask_replace_prob", "random_replace_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ConfigError(
                f"{where}.mask_replace_prob + {where}.random_replace_prob must be <= 1 (shares "
                f"of the selected tokens), got {self.mask_replace_prob} + "
                f"{self.random_replace_prob}"
            )
        if not 0.0 < self.prefix_noise_density <= 0.5:
            raise ConfigError(
                f"{where}.prefix_noise_density must be in (0, 0.5], got {self.prefix_noise_density}"
            )
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"{where}.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1:
            raise ConfigError(
                f"{where}.mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}"
            )
        if self.mlm_max_predictions is not None:
            if self.mlm_max_predictions < 1:
                raise ConfigError(
                    f"{where}.mlm_max_predictions must be >= 1, got {self.mlm_max_predictions}"
                )
            if not self.exact_count:
                raise ConfigError(
                    f"{where}.mlm_max_predictions caps BERT's exact count: set "
                    f"{where}.exact_count=true too"
                )
        if not self.plm_partial_k > 1:
            raise ConfigError(f"{where}.plm_partial_k must be > 1, got {self.plm_partial_k}")
        if self.plm_max_span < 1:
            raise ConfigError(f"{where}.plm_max_span must be >= 1, got {self.plm_max_span}")
        from pretrain.objectives.ul2_denoisers import resolve_preset

        ratios = [
            "bart_mask_ratio",
            "bart_random_ratio",
            "bart_token_mask_ratio",
            "bart_deletion_ratio",
            "bart_insert_ratio",
            "bart_permute_sentence_ratio",
            "bart_rotate_ratio",
        ]
        for name in ratios:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {value}")
        if self.bart_poisson_lambda <= 0:
            raise ConfigError(
                f"{where}.bart_poisson_lambda must be > 0, got {self.bart_poisson_lambda}"
            )
        density = self.ul2_prefix_noise_density
        if density is not None and not 0.0 < density <= 0.5:
            raise ConfigError(
                f"{where}.ul2_prefix_noise_density must be in (0, 0.5], got {density}"
            )
        try:
            resolve_preset(self.ul2_preset, self.ul2_rates, density)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self


@dataclasses.dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: typing.Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0


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


@dataclasses.dataclass
class LogConfig:
    every_steps: int = 10
    progress: bool = True
    tensorboard: bool = True
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
        """Micro-batches per optimizer step on each rank, from the token batch size."""
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
                f"({world_size} rank{'s' if world_size > 1 else ''}): {hint}"
            )
        return train.tokens_per_batch // per_micro

    def validate(self) -> ExperimentConfig:
        """Checks that need several keys; raises :class:`ConfigError` naming them."""
        from pretrain.objectives import check_pairing

        mixed = self.objective.name == "mixture"
        for i, (objective, _) in enumerate(self.objective.components()):
            key = f"objective.mixture[{i}]" if mixed else "objective"
            try:
                check_pairing(objective.name, self.model.family)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}" if mixed else str(e)) from None
            objective.validate(key)
            self._validate_denoiser_shapes(objective)
        if not self.data.train:
            raise ConfigError("data.train: give at least one shard directory")
        if self.data.weights is not None and len(self.data.weights) != len(self.data.train):
            raise ConfigError(
                f"data.weights has {len(self.data.weights)} entries for "
                f"{len(self.data.train)} data.train directories"
            )
        positive = {
            "train.seq_len": self.train.seq_len,
            "train.micro_batch_size": self.train.micro_batch_size,
            "train.max_steps": self.train.max_steps,
            "train.tokens_per_batch": self.train.tokens_per_batch,
            "train.max_nonfinite_steps": self.train.max_nonfinite_steps,
            "log.every_steps": self.log.every_steps,
            "checkpoint.keep_last": self.checkpoint.keep_last,
        }
        if self.eval.max_batches is not None:
            positive["eval.max_batches"] = self.eval.max_batches
        for i, task in enumerate(self.eval.tasks or []):
            task.validate(f"eval.tasks[{i}]")
        names = [task.name for task in self.eval.tasks or []]
        if len(set(names)) != len(names):
            raise ConfigError(f"eval.tasks: two tasks have one name: {names}")
        if names and not self.data.val:
            raise ConfigError("eval.tasks are scored with the val loss: set data.val too")
        if names and self.model.family not in ("decoder", "encoder_decoder"):
            raise ConfigError(
                f"eval.tasks: few-shot scoring needs a model that writes text (a decoder or an "
                f"encoder-decoder), model.family is {self.model.family!r}"
            )
        if self.eval.batch_size is not None:
            positive["eval.batch_size"] = self.eval.batch_size
        non_negative = {
            "eval.every_steps": self.eval.every_steps,
            "checkpoint.every_steps": self.checkpoint.every_steps,
            "optim.warmup_steps": self.optim.warmup_steps,
            "train.gc_every_steps": self.train.gc_every_steps,
            "train.spike_sigma": self.train.spike_sigma,
            "train.spike_rollback_after": self.train.spike_rollback_after,
            "train.max_rollbacks": self.train.max_rollbacks,
            "optim.grad_clip": self.optim.grad_clip,
            "optim.weight_decay": self.optim.weight_decay,
            "objective.z_loss": self.objective.z_loss,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        profile = self.log.profile_steps
        if profile is not None and not 1 <= profile[0] <= profile[1]:
            raise ConfigError(
                f"log.profile_steps must be [FIRST, LAST] with 1 <= FIRST <= LAST, got "
                f"{list(profile)}"
            )
        if self.train.spike_window_steps < 2:
            raise ConfigError(
                f"train.spike_window_steps must be >= 2, got {self.train.spike_window_steps}"
            )
        if self.train.spike_rollback_after and not self.train.spike_sigma:
            raise ConfigError(
                "train.spike_rollback_after counts the steps skipped as spikes: set "
                "train.spike_sigma too (OLMo-core uses 6)"
            )
        if self.train.spike_rollback_after and not self.checkpoint.every_steps:
            raise ConfigError(
                "train.spike_rollback_after restores the latest checkpoint: set "
                "checkpoint.every_steps so that there is one"
            )
        budget = self.train.activation_memory_budget
        if not 0 < budget <= 1:
            raise ConfigError(f"train.activation_memory_budget must be in (0, 1], got {budget}")
        if self.train.compile_mode != "default" and not self.train.compile:
            raise ConfigError(
                f"train.compile_mode={self.train.compile_mode} applies to compiled steps only; "
                "set train.compile=true or leave it at default"
            )
        if budget < 1 and not self.train.compile:
            raise ConfigError(
                "train.activation_memory_budget applies to compiled steps only; set "
                "train.compile=true or leave it at 1.0"
            )
        self._validate_optim()
        if self.train.max_minutes is not None and self.train.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0, got {self.train.max_minutes}")
        if self.train.device != "auto":
            import torch

            try:
                torch.device(self.train.device)
            except RuntimeError:
                raise ConfigError(
                    f"train.device must be 'auto' or a torch device such as 'cpu', 'cuda' or "
                    f"'cuda:1', got {self.train.device!r}"
                ) from None
        replicas = self.distributed.replicate_degree
        if replicas < 1:
            raise ConfigError(f"distributed.replicate_degree must be >= 1, got {replicas}")
        if replicas > 1 and self.distributed.strategy != "fsdp":
            raise ConfigError(
                f"distributed.replicate_degree={replicas} replicates FSDP's shard groups "
                f"(HSDP): set distributed.strategy=fsdp (it is {self.distributed.strategy!r})"
            )
        if self.distributed.timeout_seconds <= 0:
            raise ConfigError(
                f"distributed.timeout_seconds must be > 0, got {self.distributed.timeout_seconds}"
            )
        shape_keys = [k for k in self.model.overrides() if k != "attention_backend"]
        if self.model.init_from and shape_keys:
            raise ConfigError(
                "model.init_from takes the architecture from the checkpoint; remove "
                + ", ".join(f"model.{k}" for k in shape_keys)
            )
        # torchrun's WORLD_SIZE, so the batch is checked (and a fix suggested) for this launch
        self.grad_accum_steps(int(os.environ.get("WORLD_SIZE", "1")))
        return self

    def _validate_optim(self) -> None:
        optim = self.optim
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

    def _validate_denoiser_shapes(self, obj: ObjectiveConfig) -> None:
        """BART and UL2 need room for their framing; UL2 must not run out of sentinels."""
        if obj.name == "bart" and self.train.seq_len < 4:
            raise ConfigError(f"train.seq_len must be >= 4 for BART, got {self.train.seq_len}")
        if obj.name != "ul2":
            return
        from pretrain.objectives.ul2_denoisers import plan_ul2, resolve_preset
        from pretrain.tokenizer import NUM_SENTINELS

        denoisers, rates = resolve_preset(
            obj.ul2_preset, obj.ul2_rates, obj.ul2_prefix_noise_density
        )
        try:
            plan_ul2(denoisers, rates, self.train.seq_len, self.model.family, NUM_SENTINELS)
        except ValueError as e:
            raise ConfigError(str(e)) from None
