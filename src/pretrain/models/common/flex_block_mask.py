"""A FlexAttention ``BlockMask`` from a mask rule, evaluated by broadcasting instead of vmap.

``torch.nn.attention.flex_attention.create_block_mask`` evaluates the ``mask_mod`` under four
nested ``torch.vmap`` calls and derives the backward's block lists through two more vmapped
functions. Its kernels are small, but the host work is not: on this project's CPU VM (torch
2.13, one thread) a 128 x 128 mask, whose arithmetic is negligible, takes 6.9-9.5 ms against
0.24-0.32 ms here (``docs/benchmarks.md``, "Block masks without vmap"). The models build their
masks eagerly every forward (XLNet two, T5 up to three), so on a GPU that host time sits
between the device's steps whenever the host is the bottleneck.

Every ``mask_mod`` of this package only indexes captured tensors with its index arguments and
combines the results elementwise, so called once with index tensors shaped to broadcast,
``b`` ``(B, 1, 1, 1)``, ``q_idx`` ``(1, 1, Q, 1)``, ``kv_idx`` ``(1, 1, 1, KV)``, it returns the
whole ``(B, 1, Q, KV)`` mask in a few kernels: the tensor ``create_mask`` builds. From there the
block lists are those of ``create_block_mask`` (blocks with some but not all pairs visible are
partial, blocks with all of them full, padding past the lengths hidden), built from the dense
block grid directly, for the forward (rows of query blocks) and the backward (rows of key
blocks). The tests check every tensor against ``create_block_mask``.
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 128
"""FlexAttention's default sparse block size (``_DEFAULT_SPARSE_BLOCK_SIZE``)."""


def broadcast_mask(
    mask_mod, batch: int | None, q_len: int, kv_len: int, device: torch.device | str | None
) -> torch.Tensor:
    """``(B or 1, 1, q_len, kv_len)`` bool: ``mask_mod`` at every (b, q, kv), by broadcasting."""
    b = torch.arange(batch or 1, device=device).view(-1, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    q_idx = torch.arange(q_len, device=device).view(1, 1, -1, 1)
    kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    allowed = torch.as_tensor(mask_mod(b, h, q_idx, kv_idx), device=device)
    return allowed.to(torch.bool).expand(batch or 1, 1, q_len, kv_len)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``blocks`` (int32, 0/1): how many are set and their columns first, in order
    (``_dense_to_ordered`` of PyTorch: a stable descending sort)."""
    count = blocks.sum(dim=-1, dtype=torch.int32)
    columns = torch.argsort(blocks, dim=-1, descending=True, stable=True)
    return count.contiguous(), columns.to(torch.int32).contiguous()


def build_block_mask(
    mask_mod,
    batch: int | None,
    q_len: int,
    kv_len: int,
    device: torch.device | str | None,
    block_size: int = BLOCK_SIZE,
):
    """The ``BlockMask`` ``create_block_mask(mask_mod, batch, None, q_len, kv_len, device)``
    returns, for a ``mask_mod`` written with indexing and elementwise operations only."""
    from torch.nn.attention.flex_attention import BlockMask

    mask = broadcast_mask(mask_mod, batch, q_len, kv_len, device)
    pad_q, pad_kv = -q_len % block_size, -kv_len % block_size
    if pad_q or pad_kv:
        mask = torch.nn.functional.pad(mask, (0, pad_kv, 0, pad_q))  # False: nothing there
    B, H, Q, KV = mask.shape
    grid = mask.reshape(B, H, Q // block_size, block_size, KV // block_size, block_size)
    visible = grid.sum(dim=(3, 5), dtype=torch.int32)  # (B, H, query blocks, key blocks)
    full = (visible == block_size * block_size).to(torch.int32)
    partial = ((visible > 0) & (visible < block_size * block_size)).to(torch.int32)
    kv_count, kv_columns = _ordered(partial)
    full_kv_count, full_kv_columns = _ordered(full)
    q_count, q_columns = _ordered(partial.transpose(-2, -1))
    full_q_count, full_q_columns = _ordered(full.transpose(-2, -1))
    return BlockMask(
        seq_lengths=(q_len, kv_len),
        kv_num_blocks=kv_count,
        kv_indices=kv_columns,
        full_kv_num_blocks=full_kv_count,
        full_kv_indices=full_kv_columns,
        q_num_blocks=q_count,
        q_indices=q_columns,
        full_q_num_blocks=full_q_count,
        full_q_indices=full_q_columns,
        BLOCK_SIZE=(block_size, block_size),
        mask_mod=mask_mod,
    )
