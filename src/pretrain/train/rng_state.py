"""The random generators a checkpoint saves, and how a resumed run takes them back.

The objective draws its noise (masks, spans, orders) from its own generator, one per rank:
rank 0 seeded with ``train.seed`` draws what a single process draws, the others draw their
own. A checkpoint keeps every rank's generator state, so a run resumed on the same number of
ranks continues each stream exactly; on another number the data continues exactly (the
loader's state) but the objective's noise does not (one process goes on with rank 0's stream,
several draw anew from a seed of the step), and a warning says so. "Rank" here is the
data-parallel rank: the ranks of a tensor-parallel group, and the stages of a pipeline, draw
the same noise, one stream.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pretrain.distributed import comm

log = logging.getLogger(__name__)


def objective_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's objective generator started at ``step``."""
    if rank == 0 and step == 0:
        return seed
    return hash((seed, rank, step)) & 0x7FFF_FFFF_FFFF_FFFF


def rng_state(
    objective_state: torch.Tensor,
    device: torch.device,
    world_size: int,
    representatives: list[int] | None = None,
) -> dict[str, Any]:
    """The generator states to save (every rank calls this: it gathers the ranks' states).

    ``objective_ranks`` holds one state per data-parallel rank, that of the global rank
    ``representatives`` names for it (default: every rank): the ranks of a tensor-parallel
    group, and a pipeline's stages, draw the same noise, so one stands for them."""
    rng: dict[str, Any] = {"objective": objective_state, "torch": torch.get_rng_state()}
    if world_size > 1:
        states = comm.gather_objects(objective_state)
        ranks = representatives if representatives is not None else range(world_size)
        rng["objective_ranks"] = [states[r] for r in ranks]
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng_state(
    rng: dict[str, Any],
    objective_generator: torch.Generator,
    device: torch.device,
    seed: int,
    step: int,
    rank: int,
    world_size: int,
) -> None:
    """Set the generators from a checkpoint's ``rng`` (saved by :func:`rng_state`);
    ``rank`` and ``world_size`` are this rank's data-parallel ones."""
    per_rank = rng.get("objective_ranks")
    saved_on = len(per_rank) if per_rank is not None else 1
    if saved_on == world_size:
        objective_generator.set_state(per_rank[rank] if per_rank else rng["objective"])
    else:  # the data continues exactly; the objective's noise does not
        if comm.rank() == 0:
            log.warning(
                "the checkpoint was saved on %d rank(s), this run has %d: the data continues "
                "exactly, but the objective's random draws (masks, spans, orders, if it makes "
                "any) do not, so the losses differ from a run that kept %d",
                saved_on,
                world_size,
                saved_on,
            )
        if world_size == 1:  # rank 0's stream goes on, now drawing for every window
            objective_generator.set_state(rng["objective"])
        else:
            objective_generator.manual_seed(objective_seed(seed, rank, step))
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
