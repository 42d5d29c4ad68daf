"""FlexAttention block masks for packed documents and prefixes (opt-in, for CUDA).

SDPA needs a dense ``(B, 1, T, T)`` boolean mask for document masking, which costs
``B * T^2`` bytes and keeps the flash kernels out. FlexAttention (Dong et al. 2024, "Flex
Attention: A Programming Model for Generating Optimized Attention Kernels") takes the rule as a
``mask_mod`` and skips fully masked blocks, so the cost follows the documents' lengths.

PyTorch 2.13 runs FlexAttention's forward on CPU but not its backward, so training uses it only
on CUDA (``model.attention_backend=flex``); the forward is checked against SDPA in the tests.
"""

from __future__ import annotations

import functools

import torch

from pretrain.objectives.base import AttentionSpec


def supports(spec: AttentionSpec) -> bool:
    """Whether :func:`block_mask` can express ``spec`` (and a dense mask would be needed)."""
    if spec.kind == "causal" or spec.kind == "bidirectional":
        return spec.document_ids is not None
    return spec.kind == "prefix"


def block_mask(spec: AttentionSpec, seq_len: int):
    """A ``BlockMask`` for causal/bidirectional attention within documents, or a prefix LM."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = spec.document_ids
    prefix = spec.prefix_lengths
    kind = spec.kind

    def mask_mod(b, h, q_idx, kv_idx):
        if kind == "bidirectional":
            allowed = q_idx >= 0  # everything
        elif kind == "prefix":
            allowed = (kv_idx <= q_idx) | (kv_idx < prefix[b])
        else:
            allowed = kv_idx <= q_idx
        if docs is not None:
            allowed = allowed & (docs[b, q_idx] == docs[b, kv_idx])
        return allowed

    ref = docs if docs is not None else prefix
    return create_block_mask(mask_mod, ref.shape[0], None, seq_len, seq_len, device=ref.device)


@functools.cache
def compiled_flex_attention():
    """``flex_attention`` compiled once per process (it is only fast compiled)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
