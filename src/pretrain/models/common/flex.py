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

from pretrain.models.common.autocast import to_autocast_dtype
from pretrain.models.common.flex_block_mask import build_block_mask
from pretrain.objectives.base import AttentionSpec


def enabled(backend: str, device: torch.device) -> bool:
    """Whether a model whose ``attention_backend`` is ``backend`` runs FlexAttention on
    ``device``: ``flex`` everywhere (its training needs CUDA), ``auto`` on CUDA only (compiled
    kernels there; dense masks on the CPU, where FlexAttention has no backward), ``sdpa``
    never."""
    return backend == "flex" or (backend == "auto" and torch.device(device).type == "cuda")


def supports(spec: AttentionSpec) -> bool:
    """Whether :func:`block_mask` can express ``spec`` (and a dense mask would be needed)."""
    if spec.kind == "causal" or spec.kind == "bidirectional":
        return spec.document_ids is not None or spec.query_positions is not None
    return spec.kind == "prefix"


def block_mask(
    spec: AttentionSpec,
    seq_len: int,
    keys: torch.Tensor | None = None,
    device: torch.device | str | None = None,
):
    """A ``BlockMask`` for causal/bidirectional attention within documents, or a prefix LM.

    ``keys`` ``(B, T)`` bool, when given, also hides the keys where it is False (padding).
    ``device``: where the mask lives when no tensor of ``spec`` or ``keys`` says it. With the
    spec's ``query_positions`` and ``key_positions`` (a context-parallel shard), the rule is
    read at those positions: ``len(query_positions)`` queries over ``len(key_positions)`` keys.
    """
    docs = spec.document_ids
    prefix = spec.prefix_lengths
    kind = spec.kind
    q_positions, k_positions = spec.query_positions, spec.key_positions

    def mask_mod(b, h, q_idx, kv_idx):
        if q_positions is not None:  # a shard's rows and columns of the sequence's mask
            q_idx, kv_idx = q_positions[q_idx], k_positions[kv_idx]
        if kind == "bidirectional":
            allowed = q_idx >= 0  # everything
        elif kind == "prefix":
            allowed = (kv_idx <= q_idx) | (kv_idx < prefix[b])
        else:
            allowed = kv_idx <= q_idx
        if docs is not None:
            allowed = allowed & (docs[b, q_idx] == docs[b, kv_idx])
        if keys is not None:
            allowed = allowed & keys[b, kv_idx]
        return allowed

    batched = [t for t in (docs, prefix, keys) if t is not None]
    B = batched[0].shape[0] if batched else None
    refs = [t for t in (*batched, q_positions) if t is not None]
    device = refs[0].device if refs else device
    q_len = seq_len if q_positions is None else len(q_positions)
    kv_len = seq_len if k_positions is None else len(k_positions)
    return build_block_mask(mask_mod, B, q_len, kv_len, device)


def key_mask(keys: torch.Tensor, q_len: int):
    """A ``BlockMask`` of ``q_len`` queries over the keys where ``keys`` ``(B, Tk)`` is True."""

    def mask_mod(b, h, q_idx, kv_idx):
        return keys[b, kv_idx]

    B, Tk = keys.shape
    return build_block_mask(mask_mod, B, q_len, Tk, keys.device)


@functools.cache
def compiled_flex_attention():
    """``flex_attention`` compiled once per process (it is only fast compiled)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


DECODING_ROWS = 16
"""Queries of at most this many rows keep Inductor's choice (the flex-decoding kernel)."""


def main_kernel_options(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """Kernel options that put a call on FlexAttention's main kernel, or ``{}``.

    Inductor runs the forward of any query shorter than 128 rows on its flex-decoding kernel,
    made for the few query rows of a generation step. Training and evaluation meet longer short
    queries on purpose: XLNet's query stream has one row per target (85 of 512 at K = 6), T5's
    decoder some 114 rows for 512 inputs. On an H100 (torch 2.11, XLNet base, 32 x 512, bf16;
    docs/benchmarks.md, round 4) that 85-row forward took 3.8 ms a layer, against 0.18 ms for
    the content stream's 512 rows on the main kernel and 0.32 ms for its backward. So every
    differentiated call, and every query of more than :data:`DECODING_ROWS` rows, takes the
    main kernel; a generation step (one row, or a few) keeps the heuristic. Only 85 rows were
    measured. The option's name changed across PyTorch versions; both are handled.
    """
    differentiated = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not differentiated and q.shape[-2] <= DECODING_ROWS:
        return {}
    from torch.nn.attention import flex_attention

    known = getattr(getattr(flex_attention, "FlexKernelOptions", None), "__annotations__", {})
    if "BACKEND" in known:
        return {"BACKEND": "TRITON"}
    return {"FORCE_USE_FLEX_ATTENTION": True}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """``flex_attention(q, k, v, **kwargs)``: compiled on CUDA, on the main kernel except
    for generation steps (:func:`main_kernel_options`); elsewhere the unfused reference, which
    runs the forward only (CPU tests against the dense path).

    Under autocast, ``q``, ``k`` and ``v`` are first cast to autocast's dtype, as autocast does
    for SDPA. FlexAttention has no autocast rule of its own in every PyTorch version, and a
    float32 operand (a query plus a float32 bias, a float32 QK-norm) would otherwise run the
    kernels in float32, several times slower than bf16, the backward most of all.
    """
    q, k, v = to_autocast_dtype(q), to_autocast_dtype(k), to_autocast_dtype(v)
    if q.is_cuda:
        options = main_kernel_options(q, k, v)
        if options:
            kwargs["kernel_options"] = {**options, **(kwargs.get("kernel_options") or {})}
        return compiled_flex_attention()(q, k, v, **kwargs)
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, **kwargs)
