"""Tensor parallelism's single-process half (the split itself runs in
tests/distributed/test_tensor_parallel.py): fused projections become one linear layer per
block of rows with the same outputs and weights, the fused state dict comes back from the
split one, shapes that do not divide are refused by key, and gradient clipping across meshes
falls back to PyTorch's where there is one mesh."""

from __future__ import annotations

import copy

import pytest
import torch

from pretrain.config import ModelConfig
from pretrain.distributed.grad_norm import clip_grad_norm
from pretrain.distributed.tensor_parallel import (
    RowBlocks,
    check_divisible,
    fuse_row_blocks,
    split_fused_projections,
)
from pretrain.models.spec import build_model

VOCAB, SEQ = 64, 16


def _model(family: str = "decoder", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, size="debug", **overrides)
    return build_model(cfg, VOCAB, SEQ, 0)


@pytest.mark.parametrize(
    ("family", "overrides", "split"),
    [
        # GQA: 4 query heads, 2 key/value heads, so q's block is twice k's and v's
        ("decoder", {"n_heads": 4, "n_kv_heads": 2}, ["qkv", "gate_up"]),
        ("decoder", {"style": "gpt2"}, ["qkv"]),  # biases; GeluMLP's up is not fused
        ("encoder", {}, ["qkv"]),
    ],
)
def test_split_projections_compute_and_save_what_the_fused_ones_do(family, overrides, split):
    fused = _model(family, **overrides).eval()
    model = copy.deepcopy(fused)
    paths = [split_fused_projections(block) for block in model.blocks]
    block = model.blocks[0]
    assert [n for n in ("qkv", "gate_up") if isinstance(_find(block, n), RowBlocks)] == split
    if "gate_up" in split:
        assert paths[0][-2:] == ["mlp.gate_up.parts.0", "mlp.gate_up.parts.1"]
        d_ff = block.mlp.d_ff
        assert [p.weight.shape[0] for p in block.mlp.gate_up.parts] == [d_ff, d_ff]
    else:
        assert paths[0][-1] == "mlp.up"
    attn = block.attn
    rows = [p.weight.shape[0] for p in attn.qkv.parts]
    assert rows == [attn.n_heads * attn.head_dim] + 2 * [attn.n_kv_heads * attn.head_dim]

    ids = torch.randint(1, VOCAB, (2, SEQ))
    with torch.no_grad():
        want = fused.forward_tokens(ids)
        got = model.forward_tokens(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    state = model.state_dict()
    assert any(".parts.2.weight" in k for k in state)
    whole = fuse_row_blocks(state)
    reference = fused.state_dict()
    assert list(whole) == list(reference)  # same keys, same order
    for key, value in reference.items():
        assert torch.equal(whole[key], value), key


def _find(block: torch.nn.Module, name: str) -> torch.nn.Module | None:
    for module in (block.attn, block.mlp):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def test_row_blocks_must_cover_the_fused_rows():
    with pytest.raises(ValueError, match=r"row blocks \(4, 4\) do not add up to 12 rows"):
        RowBlocks(torch.nn.Linear(3, 12), (4, 4))


def test_fusing_refuses_a_missing_block():
    state = {"a.parts.0.weight": torch.zeros(2, 3), "a.parts.2.weight": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"a.weight: row blocks \[0, 2\], expected 0..1"):
        fuse_row_blocks(state)


@pytest.mark.parametrize(
    ("overrides", "degree", "key"),
    [
        ({"n_heads": 4, "n_kv_heads": 2}, 4, "model.n_kv_heads=2"),
        ({"n_heads": 4, "n_kv_heads": 4}, 8, "model.n_heads=4"),
        ({"n_heads": 2, "n_kv_heads": 2, "d_ff": 129}, 2, "model.d_ff=129"),
    ],
)
def test_shapes_that_do_not_divide_are_refused_by_key(overrides, degree, key):
    with pytest.raises(ValueError, match=f"tensor_parallel_degree={degree} must divide {key}"):
        check_divisible(_model(**overrides), degree)


def test_a_mixture_of_experts_is_refused():
    with pytest.raises(ValueError, match="no mixture of experts"):
        check_divisible(_model(n_experts=4), 2)


def test_one_mesh_clips_as_pytorch_does():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4) * 10
    for m in (a, b):
        m(x).sum().backward()
    want = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    got = clip_grad_norm(a.parameters(), 0.5)
    assert float(got) == float(want) > 0.5
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
