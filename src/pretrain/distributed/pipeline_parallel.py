"""Pipeline parallelism: the decoder's blocks split into consecutive stages over ranks.

Each of the ``P x v`` stages (``distributed.pipeline_parallel_degree`` ranks, each holding
``distributed.pipeline_stages_per_rank`` of them; :mod:`pretrain.distributed.pipeline_stages`)
holds a contiguous run of blocks; the first also the embedding, the last the final norm and
the output projection, where the loss is. A step's micro-batches (the ones gradient
accumulation would run one after the other) flow through the stages on a schedule, PyTorch's
``torch.distributed.pipelining`` (torchtitan's pipeline parallelism runs on it too):

- **GPipe** (Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks using
  Pipeline Parallelism"): every micro-batch's forward, then every backward.
- **1F1B** (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
  Clusters Using Megatron-LM" §2.2.1, PipeDream-Flush): after a warm-up, each stage
  alternates one forward and one backward, so it holds at most ``P`` micro-batches'
  activations.
- **Interleaved 1F1B** (the same paper, §2.2.2): ``v`` stages a rank, so a micro-batch
  passes each rank ``v`` times in smaller pieces; the bubble shrinks ``v``-fold for ``v``
  times the activation sends.
- **Looped BFS** (Lamy-Poirier 2023, "Breadth-First Pipeline Parallelism"): ``v`` stages a
  rank, each running every micro-batch it can before the next stage of the rank.

PyTorch's zero-bubble schedules (Qi et al. 2024), which defer the weight gradients, are not
offered: on 2.13 they gave other gradients than one process as soon as DDP or FSDP wrapped
the stages (measured, 6-step CPU runs), though right ones on bare stages.

Either way the gradients are those of the micro-batches run in one process: the loss of each
is its sum over label tokens divided by the step's label count, as in
:mod:`pretrain.train.accumulate` (PyTorch's schedules would otherwise also divide by the number
of micro-batches: ``scale_grads=False``). The idle time, the bubble, is ``(P - 1) / (m + P -
1)`` of a step with ``m`` micro-batches (GPipe §2.2), about ``(P - 1) / (v m)`` interleaved.

Tied embeddings (the default of every named decoder size) are held twice, on the first stage
for the input and on the last for the output projection, and kept equal as Megatron-LM does:
after the backward the two copies' gradients are summed over the pair of ranks, so both take
the same update from the same optimizer state. Gradient clipping counts the copy once.

With ``WORLD_SIZE = P x D``, ranks are laid out ``(pipeline rank, data-parallel rank)``: a
stage's ``D`` data-parallel ranks are consecutive and DDP all-reduces their gradients, or FSDP2
shards the stage over them (its blocks, then the stage, as torchtitan composes the two), and
the pipeline's ranks, which exchange only one activation per micro-batch and stage, are ``D``
ranks apart. With tensor parallelism (``T`` ranks a group) the layout is ``(pipeline rank,
data-parallel rank, tensor-parallel rank)``: each stage's blocks are split over its group
(:mod:`pretrain.distributed.tensor_parallel`), each rank passing the whole stream on to the
same tensor-parallel rank of the next stage. With context parallelism (``C`` ranks a group,
:mod:`pretrain.distributed.context_parallel`) the layout is ``(pipeline rank, data-parallel
rank, context-parallel rank[, tensor-parallel rank])``: each stage runs its rank's share of
every sequence, and DDP or FSDP spans a stage's data- and context-parallel ranks. A
pipeline's sharded checkpoint (``dcp/``, keyed by parameter name) resumes under another
number of stages, under FSDP or in one process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from pretrain.distributed.env import DistEnv
from pretrain.distributed.grad_norm import clip_to_norm, total_norm
from pretrain.distributed.parallelize import data_parallel_mesh, wrap_ddp
from pretrain.distributed.pipeline_stages import (
    DecoderStage,
    rank_stages,
    split_decoder,
    stage_inputs,
)
from pretrain.objectives.base import ModelBatch


class Pipeline:
    """This rank's stages of the pipeline, their schedule, and the collectives around them.

    Args:
        model: the whole single-device decoder, in host memory; trimmed to this rank's stages
            in place, then moved to ``device`` (and sharded, under FSDP).
        dist_env: this rank's place (``pp_size`` pipeline ranks, ``dp_size`` data-parallel
            ranks); its ``strategy`` says how a stage's data-parallel ranks share it: DDP or
            FSDP2.
        schedule: ``"1f1b"``, ``"gpipe"``, ``"interleaved_1f1b"`` or ``"looped_bfs"``.
        stages_per_rank: ``v``, more than 1 only for the looped schedules (interleaved 1F1B,
            looped BFS).
        micro_batches: micro-batches a step (the schedule's).
        device: this rank's device.
        autocast: context manager factory the stages' forward runs under.
        param_dtype: FSDP's compute dtype (bf16 under mixed precision), or None.
        reshard_after_forward: FSDP's ``distributed.reshard_after_forward``, for the blocks.
        sequence_parallel: with tensor parallelism, split the sequence too (Korthikanti et
            al. 2022) between each stage's first and last block.
        replicate_degree: FSDP's HSDP replicas: the data-parallel ranks of a stage as that
            many groups, each holding one sharded copy.
    """

    def __init__(
        self,
        model: nn.Module,
        dist_env: DistEnv,
        schedule: str,
        stages_per_rank: int,
        micro_batches: int,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        param_dtype: torch.dtype | None = None,
        reshard_after_forward: bool = True,
        sequence_parallel: bool = False,
        replicate_degree: int = 1,
    ):
        from torch.distributed.device_mesh import init_device_mesh

        P, D, T, C = dist_env.pp_size, dist_env.dp_size, dist_env.tp_size, dist_env.cp_size
        self.num_ranks, self.num_stages = P, P * stages_per_rank
        self.stages = rank_stages(dist_env.pp_rank, P, stages_per_rank)
        self.first, self.last = 0 in self.stages, self.num_stages - 1 in self.stages
        self.device = device
        self.tied = model.lm_head is None
        with torch.device("meta"):  # the whole model's shapes, for the FLOPs a step counts
            self.whole_model = type(model)(model.cfg)
        layers = split_decoder(model, self.stages, self.num_stages)
        self.model = model.to(device)  # only this rank's stages, built whole in host memory
        # (pp, dp[, cp][, tp]), the data-parallel ranks as (replicas, shards) under HSDP
        R = replicate_degree
        dp_dims = (("dp_replicate", R), ("dp_shard", D // R)) if R > 1 else (("dp", D),)
        inner = ((("cp", C),) if C > 1 else ()) + ((("tp", T),) if T > 1 else ())
        dims = (("pp", P), *dp_dims, *inner)
        mesh = init_device_mesh(
            device.type, tuple(n for _, n in dims), mesh_dim_names=tuple(k for k, _ in dims)
        )
        # a stage's weights are shared by its data- and context-parallel ranks
        dp_mesh = data_parallel_mesh(mesh, dp_dims[-1][0], R > 1, C > 1)
        self.pp_group = mesh["pp"].get_group()
        self.context = None  # each rank a share of every sequence
        if C > 1:
            from pretrain.distributed.context_parallel import ContextParallel

            self.context = ContextParallel(model, mesh["cp"].get_group())
        self.pp_ranks = dist.get_process_group_ranks(self.pp_group)  # by pipeline rank
        if T > 1:  # the blocks this rank holds split over its tensor-parallel group
            from pretrain.distributed.tensor_parallel import apply_tensor_parallel

            # with sequence parallelism each stage splits the sequence at its first block
            # and gathers it after its last: the stream between stages is whole
            runs = [[model.blocks[i] for i in layers[s]] for s in self.stages]
            apply_tensor_parallel(model, mesh["tp"], sequence_parallel, runs)
        context = None if self.context is None else (self.context.rank, self.context.size)
        self.modules: list[nn.Module] = [
            DecoderStage(model, layers[s], s == 0, s == self.num_stages - 1, autocast, context)
            for s in self.stages
        ]
        self.stream_dtype = self.modules[0].stream_dtype
        if dist_env.strategy == "fsdp":
            self._shard(dp_mesh, param_dtype, reshard_after_forward)
        elif D * C > 1:
            group = dp_mesh.get_group()
            self.modules = [wrap_ddp(m, device, group) for m in self.modules]
        self.embedding_group = self._embedding_group(mesh) if self.tied else None
        self.schedule_name, self.micro_batches = schedule, micro_batches
        self.schedule = None  # built for the micro-batches' shape at the first step
        self.micro_batch_shape: tuple[int, int] | None = None
        self._step_loss: Callable[[torch.Tensor, int], torch.Tensor] | None = None

    def _global_rank(self, stage: int) -> int:
        """The rank of this rank's pipeline that holds ``stage``."""
        return self.pp_ranks[stage % self.num_ranks]

    def _shard(self, dp_mesh, param_dtype: torch.dtype | None, reshard_after_forward: bool):
        """FSDP2 over each stage's data-parallel ranks: its blocks, then the stage (its
        embedding, final norm, output projection). A stage's own weights stay gathered after
        its forward: the loss, which the schedule runs after it, reads the output projection."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if param_dtype is not None:
            mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for module in self.modules:
            for block in module.blocks:
                fully_shard(
                    block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward
                )
            fully_shard(module, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)

    def _build_schedule(self, shape: tuple[int, int]) -> None:
        """The stages and their schedule, told the shapes they send and receive (B, T[, C]):
        PyTorch would otherwise find them with a forward and backward of its own, calling the
        loss once more."""
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
            ScheduleLoopedBFS,
        )

        B, T = shape

        def stream() -> torch.Tensor:  # a gradient flows back along it
            shape = (B, T, self.model.cfg.d_model)
            return torch.empty(shape, dtype=self.stream_dtype, device="meta", requires_grad=True)

        ids = torch.empty(B, T, dtype=torch.int64, device="meta")
        stages = [
            PipelineStage(
                module,
                stage,
                self.num_stages,
                self.device,
                input_args=ids if stage == 0 else stream(),
                output_args=stream(),
                group=self.pp_group,
            )
            for stage, module in zip(self.stages, self.modules, strict=True)
        ]
        options = {"n_microbatches": self.micro_batches, "loss_fn": self._loss}
        looped = {
            "interleaved_1f1b": ScheduleInterleaved1F1B,
            "looped_bfs": ScheduleLoopedBFS,
        }
        if self.schedule_name in looped:
            self.schedule = looped[self.schedule_name](stages, scale_grads=False, **options)
        else:
            single = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[self.schedule_name]
            self.schedule = single(stages[0], scale_grads=False, **options)
        self.micro_batch_shape = shape

    def _embedding_group(self, mesh) -> dist.ProcessGroup | None:
        """The pair (first stage's rank, last stage's rank) of this rank's pipeline: the ranks
        holding the tied embedding. Every rank creates every pipeline's pair (new_group is
        collective, in one order everywhere)."""
        pipelines = mesh.mesh.reshape(self.num_ranks, -1).T.tolist()  # each the pp ranks
        mine = None
        for ranks in pipelines:
            group = dist.new_group([ranks[0], ranks[-1]])
            if ranks == self.pp_ranks and (self.first or self.last):
                mine = group
        return mine

    def _loss(self, hidden: torch.Tensor, micro_batch: torch.Tensor) -> torch.Tensor:
        assert self._step_loss is not None, "the loss is set per step by Pipeline.step"
        # The target the schedule split is each row's micro-batch index (on the host).
        return self._step_loss(hidden, int(micro_batch[0]))

    def step(
        self, batches: list[ModelBatch], loss: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> None:
        """Forward and backward one step's ``batches`` (on the host) through the pipeline,
        leaving the gradients in this rank's stages' parameters (tied copies summed).

        ``loss(hidden, i)``, called on the last stage, is what micro-batch ``i``'s final
        hidden states backpropagate (:func:`pretrain.train.accumulate.pipeline_gradients`):
        found by the index the schedule splits with the inputs, not by the order of calls."""
        device = self.device
        shapes = {tuple(b.input_ids.shape) for b in batches}
        if self.schedule is None:
            self._build_schedule(tuple(batches[0].input_ids.shape))
        if shapes != {self.micro_batch_shape}:
            raise ValueError(
                f"pipeline parallelism passes micro-batches of one shape, "
                f"{self.micro_batch_shape}; this step's are {sorted(shapes)}"
            )
        input_ids, index, kwargs = stage_inputs(batches)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        self._step_loss = loss
        try:
            args = (input_ids.to(device),) if self.first else ()
            target = index if self.last else None
            self.schedule.step(*args, target=target, return_outputs=False, **kwargs)
        finally:
            self._step_loss = None
        self.sync_tied_gradients()

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
        params = list(self.model.parameters())
        counted = params
        if self.tied and self.last and not self.first:
            counted = [p for p in params if p is not self.model.embed.weight]
        # over this rank's shards (FSDP) and slices (tensor parallelism), then over the stages
        squared = total_norm(counted).to(self.device, torch.float32) ** 2
        dist.all_reduce(squared, group=self.pp_group)
        total = squared.sqrt()
        if math.isfinite(max_norm):
            clip_to_norm(params, max_norm, total)
        return total

    @torch.no_grad()
    def forward(self, batch: ModelBatch) -> torch.Tensor | None:
        """The final hidden states of ``batch`` on the last stage, None on the other ranks
        (every rank of the pipeline calls this with the same batch): evaluation, one batch at
        a time, each stage passing its output on to the next."""
        x, _, kwargs = stage_inputs([batch])  # as a step passes them
        B, T = x.shape
        for stage, module in zip(self.stages, self.modules, strict=True):
            if stage > 0 and self._global_rank(stage - 1) != dist.get_rank():
                x = torch.empty(B, T, self.model.cfg.d_model, dtype=self.stream_dtype,
                                device=self.device)  # fmt: skip
                dist.recv(x, src=self._global_rank(stage - 1))
            x = getattr(module, "module", module)(x, **kwargs)  # past DDP
            if stage == self.num_stages - 1:
                return x
            after = self._global_rank(stage + 1)
            if after != dist.get_rank():
                dist.send(x.contiguous(), dst=after)
        return None
