"""The objective's generator states in a checkpoint are one per data-parallel rank: a
tensor-parallel group's ranks, and a pipeline's stages (which draw the same noise) are saved
once, and a group resumed
on another number of ranks reseeds alike on all its ranks."""

from __future__ import annotations

import torch

from pretrain.distributed import comm
from pretrain.distributed.env import DistEnv
from pretrain.train import rng_state as rng_module
from pretrain.train.rng_state import objective_seed, restore_rng_state, rng_state


def _state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def test_a_tensor_parallel_group_saves_one_stream(monkeypatch):
    # 4 ranks, groups {0, 1} and {2, 3}: what every rank would gather
    states = [_state(0), _state(0), _state(7), _state(7)]
    monkeypatch.setattr(comm, "gather_objects", lambda _: states)
    tp_groups = DistEnv(rank=0, world_size=4, strategy="fsdp", tp_size=2)
    saved = rng_state(states[0], torch.device("cpu"), 4, tp_groups.dp_representatives())
    assert len(saved["objective_ranks"]) == 2
    assert torch.equal(saved["objective_ranks"][1], _state(7))


def test_a_pipeline_saves_one_stream_per_data_parallel_rank(monkeypatch):
    # 2 stages x 2 data-parallel ranks: stage 0 is ranks {0, 1}, stage 1 ranks {2, 3}; rank 2
    # reads data-parallel rank 0's batches, rank 3 rank 1's
    states = [_state(0), _state(7), _state(0), _state(7)]
    monkeypatch.setattr(comm, "gather_objects", lambda _: states)
    pipeline = DistEnv(rank=3, world_size=4, strategy="ddp", pp_size=2)
    assert (pipeline.pp_rank, pipeline.dp_rank, pipeline.dp_size) == (1, 1, 2)
    assert pipeline.counts_data  # the last stage has the loss
    assert not DistEnv(rank=1, world_size=4, strategy="ddp", pp_size=2).counts_data
    saved = rng_state(states[3], torch.device("cpu"), 4, pipeline.dp_representatives())
    first, second = saved["objective_ranks"]
    assert torch.equal(first, _state(0)) and torch.equal(second, _state(7))


def test_a_group_resumed_on_the_same_data_parallel_ranks_continues_its_stream():
    saved = {"objective": _state(0), "objective_ranks": [_state(0), _state(7)]}
    saved["torch"] = torch.get_rng_state()
    generator = torch.Generator()  # on either rank of data-parallel rank 1's group
    restore_rng_state(saved, generator, torch.device("cpu"), 0, 5, rank=1, world_size=2)
    assert torch.equal(generator.get_state(), _state(7))


def test_on_other_data_parallel_ranks_each_reseeds_from_its_data_parallel_rank(monkeypatch):
    monkeypatch.setattr(rng_module.comm, "rank", lambda: 0)
    saved = {"objective": _state(0), "objective_ranks": [_state(0)], "torch": torch.get_rng_state()}
    generator = torch.Generator()
    restore_rng_state(saved, generator, torch.device("cpu"), 3, 5, rank=1, world_size=2)
    assert torch.equal(generator.get_state(), _state(objective_seed(3, 1, 5)))
