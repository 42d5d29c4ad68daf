"""Loading a sharded checkpoint for a resume leaves the consolidated weights on disk."""

from __future__ import annotations

import torch

from pretrain.train.checkpoint import (
    SHARDED_DIR,
    begin_checkpoint,
    finish_checkpoint,
    load_checkpoint,
)


def _save(root, sharded: bool):
    tmp = begin_checkpoint(root, 5)
    if sharded:  # what FSDP ranks write before rank 0 finishes the directory
        (tmp / SHARDED_DIR).mkdir()
        (tmp / SHARDED_DIR / "__0_0.distcp").write_bytes(b"shard")
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    finish_checkpoint(root, 5, tmp, weights, {"rng": {}}, {"trainer": {}}, keep_last=2)


def test_a_resume_reads_the_shards_not_the_whole_weights(tmp_path):
    _save(tmp_path / "sharded", sharded=True)
    resume = load_checkpoint(tmp_path / "sharded", whole_weights=False)
    assert resume.model_state is None and resume.sharded == resume.path / SHARDED_DIR
    full = load_checkpoint(tmp_path / "sharded")  # eval, export: the whole weights
    assert torch.equal(full.model_state["w"], torch.arange(6.0).reshape(2, 3))
    # a checkpoint without shards always brings its weights: they are what resumes
    _save(tmp_path / "whole", sharded=False)
    assert load_checkpoint(tmp_path / "whole", whole_weights=False).model_state is not None


def test_without_hashing_a_truncated_or_missing_file_is_still_refused(tmp_path):
    """The ranks that load the step rank 0 verified check sizes only: a cut file is refused
    with its name, while a same-size corruption passes them (rank 0's sha256 catches it)."""
    import pytest

    from pretrain.train.checkpoint import CheckpointError, verify_checkpoint

    _save(tmp_path, sharded=True)
    path = load_checkpoint(tmp_path).path
    shard = path / SHARDED_DIR / "__0_0.distcp"
    shard.write_bytes(b"shxrd")  # same size
    verify_checkpoint(path, hash_files=False)
    with pytest.raises(CheckpointError, match="sha256"):
        verify_checkpoint(path)
    shard.write_bytes(b"sh")
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: truncated \(2 bytes, expected 5\)"):
        verify_checkpoint(path, hash_files=False)
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: missing"):
        verify_checkpoint(path, hash_files=False)


def test_unfinished_and_foreign_directories_are_not_checkpoints(tmp_path):
    from pretrain.train.checkpoint import list_steps

    _save(tmp_path, sharded=False)
    (tmp_path / "step_000007.tmp").mkdir()  # a save in progress, or killed
    (tmp_path / "step_000008_old").mkdir()
    assert list_steps(tmp_path) == [5]


def test_a_stale_temporary_directory_does_not_block_the_save(tmp_path):
    """A crash mid-save leaves step_N.tmp; saving step N again replaces it."""
    stale = tmp_path / "step_000005.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (stale / "leftover.bin").write_bytes(b"from the crashed save")
    _save(tmp_path, sharded=False)
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 5 and not stale.exists()
    assert not (loaded.path / "leftover.bin").exists()  # replaced, not written into


def test_trainer_state_from_another_version_ignores_unknown_keys():
    from pretrain.train.state import TrainState

    state = TrainState.from_dict({"step": 3, "a_key_from_a_newer_version": 1})
    assert state.step == 3
