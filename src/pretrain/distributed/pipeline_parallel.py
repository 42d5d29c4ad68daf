"""Pipeline parallelism: the decoder's blocks split into consecutive stages, one a rank.

Each of the ``P`` stages (``distributed.pipeline_parallel_degree``) holds a contiguous run of
blocks; the first also the embedding, the last the final norm and the output projection,
where the loss is. A step's micro-batches (the ones gradient accumulation would run one after
the other) flow through the stages on a schedule, PyTorch's ``torch.distributed.pipelining``
(torchtitan's pipeline parallelism runs on it too):

- **GPipe** (Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks using
  Pipeline Parallelism"): every micro-batch's forward, then every backward.
- **1F1B** (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
  Clusters Using Megatron-LM" §2.2, PipeDream-Flush): after a warm-up, each stage alternates
  one forward and one backward, so it holds at most ``P`` micro-batches' activations.

Either way the gradients are those of the micro-batches run in one process: the loss of each
is its sum over label tokens divided by the step's label count, as in
:mod:`pretrain.train.accumulate` (PyTorch's schedules would otherwise also divide by the number
of micro-batches: ``scale_grads=False``). The idle time, the bubble, is ``(P - 1) / (m + P -
1)`` of a step with ``m`` micro-batches (GPipe §2.2).

Tied embeddings (the default of every named decoder size) are held twice, on the first stage
for the input and on the last for the output projection, and kept equal as Megatron-LM does:
after the backward the two copies' gradients are summed over the pair of ranks, so both take
the same update from the same optimizer state. Gradient clipping counts the copy once.

With ``WORLD_SIZE = P x D``, ranks are laid out ``(stage, data-parallel rank)``: a stage's
``D`` data-parallel ranks are consecutive and DDP all-reduces their gradients, or FSDP2
shards the stage over them (its blocks, then the stage, as torchtitan composes the two), and
the stages of a pipeline, which exchange only one activation per micro-batch, are ``D`` ranks
apart.

Parameter names do not change: a stage keeps the blocks it owns under their indices
(``blocks.5...``) and holds a parameter-free :class:`SkippedBlock` in place of each other one,
so checkpoints are keyed as the single-device model's, and a pipeline's sharded checkpoint
(``dcp/``) resumes under another number of stages, under FSDP or in one process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pretrain.distributed.env import DistEnv
from pretrain.objectives.base import AttentionSpec, ModelBatch


class SkippedBlock(nn.Module):
    """Stands in for a block another stage holds: no parameters, the stream passes through."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


def stage_layers(n_layers: int, num_stages: int, stage: int) -> range:
    """The blocks of ``stage``: contiguous runs, the first ``n_layers % num_stages`` stages one
    block longer (the last stage also projects onto the vocabulary).

    Raises:
        ValueError: with fewer blocks than stages.
    """
    if n_layers < num_stages:
        raise ValueError(
            f"distributed.pipeline_parallel_degree={num_stages} needs at least as many blocks "
            f"as stages; the model has n_layers={n_layers}"
        )
    base, extra = divmod(n_layers, num_stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


def split_decoder(model: nn.Module, stage: int, num_stages: int) -> range:
    """Keep only ``stage``'s part of a :class:`~pretrain.models.decoder.model.DecoderLM`, in
    place; returns the indices of the blocks it keeps."""
    cfg = model.cfg
    owned = stage_layers(cfg.n_layers, num_stages, stage)
    for i in range(cfg.n_layers):
        if i not in owned:
            model.blocks[i] = SkippedBlock()
    first, last = stage == 0, stage == num_stages - 1
    if not first:
        model.pos_embed = None
        if not (last and model.lm_head is None):  # the last keeps a tied embedding's copy
            model.embed = None
    if not last:
        model.norm = None
        model.lm_head = None
    return owned


class DecoderStage(nn.Module):
    """One stage's forward: token ids (first stage) or the residual stream in, the stream (or,
    on the last stage, the final-normed hidden states) out.

    The attention arrives as keyword tensors, which the schedule splits into micro-batches
    like the inputs: ``document_ids`` (B, T), ``prefix_lengths`` (B,) for a prefix LM's
    bidirectional prefix, ``position_ids`` (B, T).
    """

    def __init__(
        self,
        model: nn.Module,
        first: bool,
        last: bool,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        super().__init__()
        self.model = model
        self.first, self.last = first, last
        # the master weights' dtype: what the stage passes on (FSDP's mixed precision may run
        # the blocks in bf16)
        self.stream_dtype = next(model.parameters()).dtype
        self.__dict__["_autocast"] = autocast  # a function, not state

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        T = x.shape[1]
        kind = "causal" if prefix_lengths is None else "prefix"
        spec = AttentionSpec(kind, document_ids=document_ids, prefix_lengths=prefix_lengths)
        with self._autocast():
            mask, is_causal = model.attention_inputs(spec, T, x.device)
            if self.first:
                x = model.embed_tokens(x, position_ids)
            x = model.run_blocks(x, model.rotary(T, position_ids), mask, is_causal)
            out = model.norm(x) if self.last else x
        # In the master weights' dtype, which the schedule is told to expect (exact: a bf16
        # output is widened; the next stage or the loss narrows it again).
        return out.to(self.stream_dtype)


def stage_inputs(batches: list[ModelBatch]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A step's micro-batches as one batch, ``(input_ids, labels, keyword tensors)``, for the
    schedule to split again into the same micro-batches.

    Causal micro-batches beside prefix-LM ones (a mixture of objectives) get a prefix of
    length 0, which is causal attention.

    Raises:
        ValueError: for attention a decoder's pipeline cannot pass on (bidirectional,
            permutation), or when only some micro-batches have document ids or positions.
    """
    kinds = {b.attention.kind for b in batches}
    if not kinds <= {"causal", "prefix"}:
        raise ValueError(
            f"pipeline parallelism runs causal and prefix-LM attention, not {sorted(kinds)}"
        )
    inputs = {
        "position_ids": [b.position_ids for b in batches],
        "document_ids": [b.attention.document_ids for b in batches],
    }
    if "prefix" in kinds:
        inputs["prefix_lengths"] = [
            b.attention.prefix_lengths
            if b.attention.kind == "prefix"
            else torch.zeros(len(b.input_ids), dtype=torch.int64)
            for b in batches
        ]
    kwargs = {}
    for name, parts in inputs.items():
        present = [p is not None for p in parts]
        if any(present) and not all(present):
            raise ValueError(f"pipeline parallelism: {name} in some micro-batches of a step only")
        if all(present):
            kwargs[name] = torch.cat(parts)
    input_ids = torch.cat([b.input_ids for b in batches])
    labels = torch.cat([b.labels for b in batches])
    return input_ids, labels, kwargs


@dataclass
class StepSums:
    """The last stage's sums over a step's micro-batches (zeros on the other stages)."""

    ce_sum: torch.Tensor
    router_sum: torch.Tensor
    per_task: dict[str, list]


class Pipeline:
    """This rank's stage of the pipeline, its schedule, and the collectives around them.

    Args:
        model: the whole single-device decoder; trimmed to this rank's stage in place (and
            sharded, under FSDP).
        dist_env: this rank's place (``pp_size`` stages, ``dp_size`` data-parallel ranks);
            its ``strategy`` says how a stage's data-parallel ranks share it: DDP or FSDP2.
        schedule: ``"1f1b"`` or ``"gpipe"``.
        micro_batches: micro-batches a step (the schedule's).
        device: this rank's device.
        autocast: context manager factory the stage's forward runs under.
        param_dtype: FSDP's compute dtype (bf16 under mixed precision), or None.
        reshard_after_forward: FSDP's ``distributed.reshard_after_forward``, for the blocks.
    """

    def __init__(
        self,
        model: nn.Module,
        dist_env: DistEnv,
        schedule: str,
        micro_batches: int,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        param_dtype: torch.dtype | None = None,
        reshard_after_forward: bool = True,
    ):
        from torch.distributed.device_mesh import init_device_mesh

        P, D = dist_env.pp_size, dist_env.dp_size
        self.stage, self.num_stages = dist_env.pp_rank, P
        self.first, self.last = self.stage == 0, self.stage == P - 1
        self.device = device
        self.tied = model.lm_head is None
        with torch.device("meta"):  # the whole model's shapes, for the FLOPs a step counts
            self.whole_model = type(model)(model.cfg)
        split_decoder(model, self.stage, P)
        self.model = model
        mesh = init_device_mesh(device.type, (P, D), mesh_dim_names=("pp", "dp"))
        self.pp_group = mesh["pp"].get_group()
        self.neighbors = (dist_env.rank - D, dist_env.rank + D)  # previous and next stage
        self.module: nn.Module = DecoderStage(model, self.first, self.last, autocast)
        self.stream_dtype = self.module.stream_dtype
        self.sharded = dist_env.strategy == "fsdp"
        if self.sharded:
            self._shard(mesh["dp"], param_dtype, reshard_after_forward)
        elif D > 1:
            from pretrain.distributed.parallelize import wrap_ddp

            self.module = wrap_ddp(self.module, device, mesh["dp"].get_group())
        self.embedding_group = self._embedding_group(dist_env) if self.tied else None
        self.schedule_name, self.micro_batches = schedule, micro_batches
        self.schedule = None  # built for the micro-batches' shape at the first step
        self.micro_batch_shape: tuple[int, int] | None = None
        self._step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def _shard(self, dp_mesh, param_dtype: torch.dtype | None, reshard_after_forward: bool):
        """FSDP2 over the stage's data-parallel ranks: each of its blocks, then the stage (its
        embedding, final norm, output projection). The stage's own weights stay gathered
        after its forward: the loss, which the schedule runs after it, reads the output
        projection."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if param_dtype is not None:
            mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in self.model.blocks:
            if any(True for _ in block.parameters()):  # not a stand-in
                fully_shard(
                    block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward
                )
        fully_shard(self.module, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)

    def _build_schedule(self, shape: tuple[int, int]) -> None:
        """The stage and its schedule, told the shapes it sends and receives (B, T[, C]):
        PyTorch would otherwise find them with a forward and backward of its own, calling the
        loss once more."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        B, T = shape

        def stream() -> torch.Tensor:  # a gradient flows back along it
            shape = (B, T, self.model.cfg.d_model)
            return torch.empty(shape, dtype=self.stream_dtype, device="meta", requires_grad=True)

        ids = torch.empty(B, T, dtype=torch.int64, device="meta")
        stage = PipelineStage(
            self.module,
            self.stage,
            self.num_stages,
            self.device,
            input_args=ids if self.first else stream(),
            output_args=stream(),
            group=self.pp_group,
        )
        schedule_cls = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[self.schedule_name]
        self.schedule = schedule_cls(
            stage, n_microbatches=self.micro_batches, loss_fn=self._loss, scale_grads=False
        )
        self.micro_batch_shape = shape

    def _embedding_group(self, dist_env: DistEnv) -> dist.ProcessGroup | None:
        """The pair (first stage, last stage) of this rank's data-parallel index: the ranks
        holding the tied embedding. Every rank creates every pair (new_group is collective)."""
        D, last = dist_env.dp_size, (self.num_stages - 1) * dist_env.dp_size
        mine = None
        for d in range(D):
            group = dist.new_group([d, last + d])
            if dist_env.dp_rank == d and (self.first or self.last):
                mine = group
        return mine

    def _loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert self._step_loss is not None, "the loss is set per step by Pipeline.step"
        return self._step_loss(hidden, labels)

    def step(
        self,
        batches: list[ModelBatch],
        loss: Callable[[torch.Tensor, torch.Tensor, list], tuple],
        divisor: torch.Tensor,
        dp_size: int,
    ) -> StepSums:
        """Forward and backward one step's ``batches`` (on the host) through the pipeline,
        leaving the gradients in this stage's parameters (tied copies summed).

        ``loss(hidden, labels, groups)`` is the trainer's loss
        (:meth:`~pretrain.train.loss_module.ModelWithLoss.loss`); each micro-batch's total is
        divided by ``divisor`` (the step's label tokens over all ranks), times ``dp_size``
        since DDP averages."""
        device = self.device
        shapes = {tuple(b.input_ids.shape) for b in batches}
        if self.schedule is None:
            self._build_schedule(tuple(batches[0].input_ids.shape))
        if shapes != {self.micro_batch_shape}:
            raise ValueError(
                f"pipeline parallelism passes micro-batches of one shape, "
                f"{self.micro_batch_shape}; this step's are {sorted(shapes)}"
            )
        input_ids, labels, kwargs = stage_inputs(batches)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        sums = StepSums(torch.zeros((), device=device), torch.zeros((), device=device), {})
        groups: Iterator[list] = iter([b.loss_groups(device) for b in batches] if self.last else [])

        def step_loss(hidden: torch.Tensor, micro_labels: torch.Tensor) -> torch.Tensor:
            # The schedule runs the last stage's micro-batches in order: the next groups are
            # this micro-batch's.
            total, ce, tasks, router = loss(hidden, micro_labels, next(groups))
            sums.ce_sum += ce
            sums.router_sum += router
            for name, (task_ce, count) in tasks.items():
                task = sums.per_task.setdefault(name, [torch.zeros_like(task_ce), 0])
                task[0] += task_ce
                task[1] += count
            return total / divisor * dp_size

        self._step_loss = step_loss
        try:
            args = (input_ids.to(device),) if self.first else ()
            target = labels.to(device) if self.last else None
            self.schedule.step(*args, target=target, return_outputs=False, **kwargs)
        finally:
            self._step_loss = None
        self.sync_tied_gradients()
        return sums

    def sync_tied_gradients(self) -> None:
        """Sum the tied embedding's gradients of the first and the last stage (Megatron-LM's
        embedding group): the input lookup's part and the output projection's."""
        if self.embedding_group is None:
            return
        weight = self.model.embed.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        # Under FSDP each rank of the pair holds the same rows of it: the same data-parallel
        # rank's shard.
        grad = weight.grad.to_local() if hasattr(weight.grad, "to_local") else weight.grad
        dist.all_reduce(grad, group=self.embedding_group)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Scale every stage's gradients so that their total 2-norm is at most ``max_norm``;
        returns the norm before clipping, the same on every rank. A tied embedding counts
        once (the first stage's copy)."""
        counted = [p for p in self.model.parameters() if p.grad is not None]
        if self.tied and self.last and not self.first:
            counted = [p for p in counted if p is not self.model.embed.weight]
        grads = [p.grad for p in counted]
        local = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros(())
        if hasattr(local, "full_tensor"):  # FSDP: the norm over the stage's shards
            local = local.full_tensor()
        squared = local.to(self.device, torch.float32) ** 2
        dist.all_reduce(squared, group=self.pp_group)
        total = squared.sqrt()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if math.isfinite(max_norm):
            from torch.distributed.tensor.experimental import implicit_replication

            with implicit_replication():  # the plain factor scales FSDP's sharded gradients
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    @torch.no_grad()
    def forward(self, batch: ModelBatch) -> torch.Tensor | None:
        """The final hidden states of ``batch`` on the last stage, None on the others (every
        stage of the pipeline calls this with the same batch): evaluation, one batch at a
        time, each stage passing its output on to the next."""
        module = self.module.module if hasattr(self.module, "module") else self.module  # DDP
        kwargs = {"position_ids": batch.position_ids}
        spec = batch.attention
        if spec.kind not in ("causal", "prefix"):
            raise ValueError(f"pipeline parallelism cannot evaluate {spec.kind} attention")
        kwargs["document_ids"] = spec.document_ids
        kwargs["prefix_lengths"] = spec.prefix_lengths if spec.kind == "prefix" else None
        if self.first:
            x = batch.input_ids
        else:
            B, T = batch.input_ids.shape
            shape = (B, T, self.model.cfg.d_model)
            x = torch.empty(shape, dtype=self.stream_dtype, device=self.device)
            dist.recv(x, src=self.neighbors[0])
        out = module(x, **kwargs)
        if self.last:
            return out
        dist.send(out.contiguous(), dst=self.neighbors[1])
        return None


def gather_stage_weights(model: nn.Module, sends: bool) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0, from every stage's part (collective); an empty
    dict on the other ranks. ``sends``: this rank's part goes (one data-parallel rank's per
    stage is enough; the others hold the same weights). FSDP's shards are gathered first,
    over each stage's data-parallel ranks."""
    state = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):  # every data-parallel rank of the stage takes part
            value = value.full_tensor()
        state[name] = value.detach().cpu()
    state = state if sends else {}
    parts: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(state, parts, dst=0)
    merged: dict[str, torch.Tensor] = {}
    for part in parts or []:
        merged.update(part)
    return merged
