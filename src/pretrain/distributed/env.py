"""The process group of a ``torchrun`` launch, read from the environment torchrun sets.

torchrun (and ``python -m torch.distributed.run``) exports ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` to every worker; a plain ``python -m
pretrain train`` sets none of them and runs as rank 0 of 1 without a process group.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pretrain.config import DistributedConfig
from pretrain.distributed.launch import env_world

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Ranks are laid out ``(pipeline stage, data-parallel rank, context-parallel rank,
    tensor-parallel rank)``, the last innermost: a tensor-parallel group is ``tp_size``
    consecutive ranks (one node's fast links carry its traffic every block), a
    context-parallel group (which gathers keys and values every block) comes next, a stage's
    data-parallel ranks follow each other, and the pipeline's stages, which pass only
    activations, are furthest apart.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    strategy: str = "none"
    backend: str | None = None
    tp_size: int = 1  # ranks in a tensor-parallel group: consecutive, they share their batches
    pp_size: int = 1  # pipeline stages: a pipeline's ranks share their batches too
    cp_size: int = 1  # ranks in a context-parallel group: they share batches, split sequences

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def pp_rank(self) -> int:
        """This rank's pipeline stage (0: the first, holding the embedding)."""
        return self.rank // (self.world_size // self.pp_size)

    @property
    def dp_rank(self) -> int:
        """This rank's place among the data-parallel ranks: which batches it reads."""
        return (self.rank % (self.world_size // self.pp_size)) // (self.cp_size * self.tp_size)

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: groups of ``tp_size * cp_size * pp_size`` ranks, each reading
        its own batches."""
        return self.world_size // (self.tp_size * self.cp_size * self.pp_size)

    @property
    def cp_rank(self) -> int:
        """This rank's place in its context-parallel group: which positions it holds."""
        return (self.rank // self.tp_size) % self.cp_size

    @property
    def dp_cp_rank(self) -> int:
        """This rank's place among the ranks that hold different tokens of a step (data- and
        context-parallel ranks)."""
        return self.dp_rank * self.cp_size + self.cp_rank

    @property
    def dp_cp_size(self) -> int:
        """Ranks that hold different tokens of a step: DDP and FSDP average the gradients
        over them."""
        return self.dp_size * self.cp_size

    @property
    def counts_data(self) -> bool:
        """Whether this rank's loss sums and token counts enter the sums over ranks: one rank
        speaks for the ranks that saw the same tokens: a tensor-parallel group's first, a
        pipeline's last stage (where the loss is). Each context-parallel rank counts its
        own positions."""
        return self.rank % self.tp_size == 0 and self.pp_rank == self.pp_size - 1

    def dp_representatives(self) -> list[int]:
        """One global rank per data-parallel rank, in data-parallel order (the first stage's
        first context- and tensor-parallel ranks): whose generator states a checkpoint keeps."""
        return [d * self.cp_size * self.tp_size for d in range(self.dp_size)]


def init_distributed(cfg: DistributedConfig, device: torch.device) -> DistEnv:
    """Join the process group torchrun describes (no-op for a single plain process).

    Raises ValueError when the environment and ``distributed.strategy`` disagree: several
    processes with ``strategy=none`` would each train the whole model on the same data.
    """
    rank, local_rank, world_size = env_world()
    if world_size > 1 and cfg.strategy == "none":
        raise ValueError(
            f"WORLD_SIZE={world_size} (launched by torchrun) but distributed.strategy=none; "
            "set --distributed.strategy=ddp or --distributed.strategy=fsdp"
        )
    if cfg.strategy == "none":
        return DistEnv()
    if world_size % cfg.replicate_degree:
        raise ValueError(
            f"distributed.replicate_degree={cfg.replicate_degree} must divide the number of "
            f"ranks, WORLD_SIZE={world_size} (HSDP: that many equal shard groups)"
        )
    tp = cfg.tensor_parallel_degree
    if world_size % (tp * cfg.replicate_degree):
        raise ValueError(
            f"distributed.tensor_parallel_degree={tp} times distributed.replicate_degree="
            f"{cfg.replicate_degree} must divide the number of ranks, WORLD_SIZE={world_size}"
        )
    pp = cfg.pipeline_parallel_degree
    if world_size % (tp * pp * cfg.replicate_degree):
        raise ValueError(
            f"distributed.pipeline_parallel_degree={pp} times tensor_parallel_degree={tp} "
            f"times replicate_degree={cfg.replicate_degree} must divide the number of ranks, "
            f"WORLD_SIZE={world_size}"
        )
    cp = cfg.context_parallel_degree
    if world_size % (tp * pp * cp * cfg.replicate_degree):
        raise ValueError(
            f"distributed.context_parallel_degree={cp} times tensor_parallel_degree={tp} "
            f"times pipeline_parallel_degree={pp} times replicate_degree="
            f"{cfg.replicate_degree} must divide the number of ranks, WORLD_SIZE={world_size}"
        )
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("distributed.backend=nccl needs train.device=cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            if world_size > 1:
                raise ValueError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")
            # strategy ddp/fsdp on one plain process: a group of one, so the same code runs.
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=cfg.timeout_seconds),
            device_id=device if backend == "nccl" else None,
        )
    env = DistEnv(rank, local_rank, world_size, cfg.strategy, backend, tp, pp, cp)
    if not env.is_main:
        # Only rank 0 reports progress (DESIGN.md §8); other ranks still report problems.
        logging.getLogger("pretrain").setLevel(logging.WARNING)
    log.info("rank %d of %d (%s, %s, tensor parallel %d, pipeline parallel %d, context "
             "parallel %d)", rank, world_size, backend, cfg.strategy, tp, pp, cp)  # fmt: skip
    return env


def shutdown() -> None:
    """Leave the process group once every rank got here: no rank closes its connections
    while a peer may still be finishing the last collective."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
