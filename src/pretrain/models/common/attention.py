"""Multi-head self-attention with grouped-query heads, RoPE, optional q/k norm and a KV cache.

* Scaled dot-product attention (Vaswani et al. 2017) through
  ``torch.nn.functional.scaled_dot_product_attention``, so CPU and CUDA pick their fused
  kernels; plain causal attention takes the ``is_causal=True`` path and builds no mask.
  Eager CPU with short sequences (bf16, or fp32 causal) takes explicit GEMMs instead
  (:mod:`~pretrain.models.common.explicit_attention`), faster there than the flash kernel;
  without a mask or a cache, q, k and v then come from the projection already rotated and
  head-major (:mod:`~pretrain.models.common.heads_layout`).
* Grouped-query attention (GQA; Ainslie et al. 2023): ``n_kv_heads`` key/value heads shared by
  groups of ``n_heads / n_kv_heads`` query heads (``n_kv_heads == 1`` is multi-query).
* q/k RMSNorm per head before RoPE, as OLMo-2 and Qwen3 do for training stability.

:func:`attention_mask` turns an :class:`~pretrain.objectives.base.AttentionSpec` into an SDPA
boolean mask; it is shared by every family (decoder, encoder, prefix LM, XLNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common.explicit_attention import explicit_attention, prefers_explicit
from pretrain.models.common.heads_layout import rotary_heads
from pretrain.models.common.positions import apply_rotary
from pretrain.models.common.rms_norm import RMSNorm
from pretrain.objectives.base import AttentionSpec

# Added to the score of a pair that may not attend, where a float bias carries the mask (T5's
# relative bias, XLNet's two streams): finite, so a row with nothing visible is uniform instead
# of NaN (as HF's finite masks), and finite in bf16 too (fp32's finfo.min rounds to -inf).
MASKED_SCORE = -1e30


def attention_mask(
    spec: AttentionSpec, seq_len: int, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """The boolean SDPA mask for ``spec``: ``(B, 1, T, T)``, True where query i may see key j.

    Returns None when no mask is needed: plain ``causal`` (call SDPA with ``is_causal=True``)
    and plain ``bidirectional`` (attend everywhere). ``document_ids`` restrict every kind to
    same-document pairs, so packed documents never see each other. With ``query_positions``
    and ``key_positions`` (a context-parallel shard) the mask is ``(B or 1, 1, Tq, Tk)``, the
    rows and columns of the whole sequence's mask at those positions, and never None: its
    width tells the attention that the keys are gathered from every shard.

    Raises:
        ValueError: on an unknown kind, a ``prefix``/``permutation`` spec missing its tensor,
            or positions given for one side only or with a permutation.
    """
    docs = spec.document_ids
    if docs is not None:
        device = docs.device
    q_pos, k_pos = spec.query_positions, spec.key_positions
    sharded = q_pos is not None or k_pos is not None
    if sharded and (q_pos is None or k_pos is None or spec.kind == "permutation"):
        raise ValueError(
            "query_positions and key_positions come together, with a causal, bidirectional or "
            "prefix attention spec"
        )
    if sharded:
        q_pos, k_pos = q_pos.to(device), k_pos.to(device)
    else:
        q_pos = k_pos = torch.arange(seq_len, device=device)
    causal = k_pos[None, :] <= q_pos[:, None]  # (Tq, Tk): key j <= query i
    if spec.kind == "causal":
        if docs is None and not sharded:
            return None
        allowed = causal[None]  # (1, Tq, Tk)
    elif spec.kind == "bidirectional":
        if docs is None and not sharded:
            return None
        allowed = None if docs is not None else torch.ones_like(causal)[None]
    elif spec.kind == "prefix":
        if spec.prefix_lengths is None:
            raise ValueError("attention kind 'prefix' needs prefix_lengths (B,)")
        prefix = spec.prefix_lengths.to(causal.device)
        # Every query sees the whole prefix; past it, causal. Inside the prefix, j < P covers it.
        allowed = causal[None] | (k_pos[None, None, :] < prefix[:, None, None])  # (B, Tq, Tk)
    elif spec.kind == "permutation":
        allowed = spec.permutation_allowed().to(causal.device)  # (B, T, T)
    else:
        raise ValueError(
            f"unknown attention kind {spec.kind!r}; valid: causal, bidirectional, prefix, "
            "permutation"
        )
    if docs is not None:
        q_docs, k_docs = (docs, docs) if not sharded else (docs[:, q_pos], docs[:, k_pos])
        same_doc = q_docs[:, :, None] == k_docs[:, None, :]  # (B, Tq, Tk)
        allowed = same_doc if allowed is None else allowed & same_doc
    return allowed[:, None]  # (B or 1, 1, Tq, Tk): broadcast over heads


def cached_causal_mask(seq_len: int, offset: int, device: torch.device | str) -> torch.Tensor:
    """``(T, offset + T)`` mask for T new queries at positions ``offset..`` over cached keys.

    SDPA's ``is_causal`` aligns the triangle top-left, which is wrong once keys outnumber
    queries; this aligns it bottom-right.
    """
    q_pos = torch.arange(offset, offset + seq_len, device=device)
    k_pos = torch.arange(offset + seq_len, device=device)
    return k_pos[None, :] <= q_pos[:, None]


class KVCache:
    """Keys and values of past positions for incremental decoding, preallocated per layer.

    Each layer writes its new keys/values at ``length`` through :meth:`update`; the model
    calls :meth:`advance` once all layers have run, so every layer sees the same offset.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, KV, t, hd) at the current length; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, KV, end, hd)

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``i`` becomes the old row ``rows[i]`` (beam search keeps the best beams)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


class Attention(nn.Module):
    """Self-attention: fused qkv projection, optional q/k norm and RoPE, SDPA, output projection.

    The fused projection's rows are ``[q (n_heads*hd); k (n_kv_heads*hd); v (n_kv_heads*hd)]``:
    one matmul instead of three, and a row split away from HF's separate ``q/k/v_proj``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        layer_idx: int = 0,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=bias)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else None
        self.core = ScaledDotProduct()

    def fused_projections(self) -> dict[str, tuple[int, ...]]:
        """Each fused projection's blocks of output rows: ``qkv``'s queries, keys and values
        (what Muon orthogonalizes one by one, as it would separate matrices)."""
        hd = self.head_dim
        return {"qkv": (self.n_heads * hd, self.n_kv_heads * hd, self.n_kv_heads * hd)}

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` (B, T, d_model) to itself (and to cached keys); return (B, T, d_model).

        Args:
            x: input hidden states.
            rope: cos/sin tables from :class:`~pretrain.models.common.positions.RotaryEmbedding`,
                or None for models with absolute positions.
            mask: boolean SDPA mask (True = attend), broadcastable to (B, H, T, T_keys), or a
                FlexAttention ``BlockMask`` (see :mod:`pretrain.models.common.flex`).
            is_causal: use SDPA's causal fast path (only with ``mask`` None and no cache offset).
            kv_cache: cache to append this call's keys/values to and attend over.
        """
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).view(B, T, H + 2 * KV, hd)  # (B, T, H + 2KV, hd)
        heads = qkv.transpose(1, 2)  # (B, H + 2KV, T, hd): the sequence where the rule reads it
        explicit = kv_cache is None and mask is None and prefers_explicit(heads, heads, is_causal)
        if explicit and self.q_norm is None:
            # eager CPU: head-major q, k, v (RoPE applied) straight from the projection, laid
            # out for the explicit attention's batched GEMMs
            q, k, v = rotary_heads(qkv, H, KV, rope)  # (B, H|KV, T, hd)
            y = explicit_attention(q, k, v, is_causal=is_causal)
            return self.out(y.transpose(1, 2).reshape(B, T, H * hd))
        qk, v = qkv.split([H + KV, KV], dim=2)  # (B, T, H + KV, hd), (B, T, KV, hd)
        if self.q_norm is not None:
            q, k = qk.split([H, KV], dim=2)  # (B, T, H|KV, hd)
            q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        else:
            if rope is not None:  # q and k are adjacent heads: rotate both in one pass
                qk = apply_rotary(qk, *rope)
            q, k = qk.split([H, KV], dim=2)  # (B, T, H|KV, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|KV, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, KV, T_keys, hd)
        y = self.core(q, k, v, mask, is_causal)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, H * hd)  # (B, T, d_model): heads side by side
        return self.out(y)


class ScaledDotProduct(nn.Module):
    """``softmax(q k^T / sqrt(hd) + mask) v`` on the kernel that suits the inputs.

    A module of its own (without parameters, so no state-dict key) so that a wrapper from
    outside can reach the rotated queries, keys and values: context parallelism gathers the
    keys and values of every rank here (:mod:`pretrain.distributed.context_parallel`), as
    torchtitan wraps its attention for the same reason.
    """

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attend ``q`` (B, H, Tq, hd) over ``k``, ``v`` (B, KV, Tk, hd); returns (B, H, Tq, hd).

        ``mask``: boolean (True = attend) broadcastable to (B, H, Tq, Tk), or a FlexAttention
        ``BlockMask``; ``is_causal``: SDPA's causal fast path (no mask, Tq == Tk).
        """
        gqa = k.shape[1] != q.shape[1]
        if mask is not None and not isinstance(mask, torch.Tensor):  # a FlexAttention BlockMask
            from pretrain.models.common import flex

            return flex.attend(q, k, v, block_mask=mask, enable_gqa=gqa)
        if prefers_explicit(q, k, is_causal and mask is None):  # CPU: GEMMs beat SDPA's kernel
            return explicit_attention(q, k, v, mask=mask, is_causal=is_causal)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa
        )
