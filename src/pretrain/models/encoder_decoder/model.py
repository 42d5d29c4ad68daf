"""Encoder-decoder transformer: T5 v1.1 (Raffel et al. 2020).

* T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer"): a bidirectional encoder and a causal decoder with cross-attention to the
  encoder's output; pre-norm blocks ``x = x + f(norm(x))`` with RMSNorm without bias or mean
  subtraction (HF ``T5LayerNorm``), a final norm after each stack, no biases anywhere, and no
  1/sqrt(d_kv) scaling of attention scores (folded into the init of the query projection).
* Relative positions (Shaw et al. 2018, "Self-Attention with Relative Position
  Representations"), in T5's form: one learned scalar per head and per *bucket* of the key minus
  query distance, added to the attention scores. Buckets are exact for small distances and
  logarithmic up to ``relative_attention_max_distance``; the encoder's are signed
  (bidirectional), the decoder's only look back. Each stack computes its bias once (HF keeps the
  table in its first layer) and shares it with all its layers; cross-attention has none.
* T5 v1.1 changes: gated-GELU feed-forward ``down(gelu_tanh(gate(x)) * up(x))`` (Shazeer 2020),
  an LM head untied from the input embedding and hence no ``d_model**-0.5`` output rescaling.
  The input embedding is shared by the encoder and the decoder.

Padding: pad tokens (``cfg.pad_id``) in the encoder input are masked out as *keys*, in the
encoder's self-attention and in the decoder's cross-attention, exactly as HF does with
``attention_mask = input_ids != pad_id``; pad queries still attend to the real tokens (their
outputs are never read). The decoder input is not masked (its first token, the decoder start
token, is the pad id in T5); decoder labels of -100 carry no loss.

The model returns the decoder's final hidden states (after its final norm); the loss projects
them with :attr:`EncoderDecoderLM.output_weight` (the LM head) in chunks, so full (B, T, V)
logits never exist during training. There is no dropout (T5 used 0.1 in pretraining v1.0 and
none in v1.1 pretraining). The module is single-device; distributed wrappers iterate
:attr:`EncoderDecoderLM.blocks` (encoder blocks then decoder blocks) from outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import flex
from pretrain.models.common.attention import MASKED_SCORE, attention_mask, cached_causal_mask
from pretrain.models.common.autocast import to_autocast_dtype
from pretrain.models.common.explicit_attention import explicit_attention, prefers_explicit
from pretrain.models.common.recompute import recomputed_when_compiled
from pretrain.models.common.rms_norm import RMSNorm
from pretrain.models.encoder_decoder.configs import EncoderDecoderConfig
from pretrain.models.encoder_decoder.decoder_cache import AttentionCache, DecoderCache
from pretrain.objectives.base import AttentionSpec, ModelBatch


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket (int64, in ``[0, num_buckets)``) of each ``key - query`` distance.

    Bidirectional: half the buckets for keys after the query, half for keys at or before it.
    Causal: keys after the query all fall in bucket 0 (they are masked anyway). In each half,
    distances below ``n/2`` get a bucket each and larger ones share logarithmically wider
    buckets, all distances from ``max_distance`` on sharing the last. Same arithmetic as Mesh
    TensorFlow and HF ``T5Attention._relative_position_bucket``, so buckets agree exactly.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)  # look-back distance, >= 0
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(0) for the small distances is discarded by the where below.
    large = (
        max_exact
        + (
            torch.log(distance.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned scalar per (bucket, head), added to attention scores (Shaw et al. 2018; T5)."""

    def __init__(self, cfg: EncoderDecoderConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.embed = nn.Embedding(self.num_buckets, cfg.n_heads)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        """The bias (1, H, q_len, k_len) for queries ``q_offset..q_offset+q_len-1`` over keys
        ``0..k_len-1`` (an offset: the new queries of a decoder with a cache)."""
        device = self.embed.weight.device
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        bucket = relative_position_bucket(
            k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance
        )  # (q_len, k_len)
        return self.embed(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, H, q_len, k_len)


def all_visible_on_cpu(keys: torch.Tensor) -> bool:
    """Whether every key of ``keys`` (bool) is visible, asked only where the answer costs no
    device sync (eager, on a CPU): the position bias then stays ``(1, H, T, T)`` instead of a
    ``(B, H, T, T)`` tensor with the pad mask in it, and its gradient too."""
    return keys.device.type == "cpu" and not torch.compiler.is_compiling() and bool(keys.all())


def additive_bias(
    position_bias: torch.Tensor | None, allowed: torch.Tensor | None
) -> torch.Tensor | None:
    """Position bias (1, H, Tq, Tk) plus a boolean mask (B, 1, Tq|1, Tk) as one float bias."""
    if allowed is None:
        return position_bias
    if position_bias is None:
        return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, MASKED_SCORE)
    return position_bias.masked_fill(~allowed, MASKED_SCORE)  # (B, H, Tq, Tk)


@dataclass(frozen=True)
class FlexScores:
    """What the FlexAttention path adds to and hides from the scores of one attention kind.

    Attributes:
        block_mask: the ``BlockMask`` (pad keys, causality, documents); None: nothing hidden.
        bias: ``(H, Tq, Tk)`` relative position bias added by a ``score_mod`` (its gradient
            flows back through the kernel), or None (cross-attention).
    """

    block_mask: object | None
    bias: torch.Tensor | None = None


def flex_attention_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scores: FlexScores
) -> torch.Tensor:
    """T5 attention (no score scaling) of ``q`` ``(B, H, Tq, hd)`` through FlexAttention."""
    bias = scores.bias
    score_mod = None
    if bias is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, q_idx, kv_idx]

    return flex.attend(q, k, v, score_mod=score_mod, block_mask=scores.block_mask, scale=1.0)


class T5Attention(nn.Module):
    """Multi-head attention without biases or score scaling; self- or cross-attention.

    ``q``, ``k``, ``v``, ``o`` are separate matrices (HF's layout), since cross-attention
    projects queries and keys from different inputs.
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.d_kv = cfg.n_heads, cfg.d_kv
        inner = cfg.n_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | FlexScores | None,
        memory: torch.Tensor | None = None,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` (B, Tq, d_model) to itself, or to ``memory`` (B, Tk, d_model).

        Args:
            bias: additive float scores broadcastable to (B, H, Tq, Tk): position bias and
                mask (SDPA); or :class:`FlexScores` (``attention_backend="flex"``).
            cache: for generation. Self-attention appends this call's keys and values to it
                and attends over all of them; cross-attention fills it from ``memory`` once
                and then reuses it.
        """
        B, Tq, _ = x.shape
        H, hd = self.n_heads, self.d_kv
        q = self.q(x).view(B, Tq, H, hd).transpose(1, 2)  # (B, H, Tq, hd)
        if memory is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # the encoder output's, projected at the first step
        else:
            kv_in = x if memory is None else memory
            Tk = kv_in.shape[1]
            k = self.k(kv_in).view(B, Tk, H, hd).transpose(1, 2)  # (B, H, Tk, hd)
            v = self.v(kv_in).view(B, Tk, H, hd).transpose(1, 2)  # (B, H, Tk, hd)
            if cache is not None:
                k, v = cache.append(k, v)  # self-attention: every position so far
        # No 1/sqrt(hd) in T5 (folded into the query init); the bias carries positions and mask.
        # SDPA picks a fused kernel (memory-efficient attention with a bias gradient on CUDA).
        if isinstance(bias, FlexScores):
            y = flex_attention_scores(q, k, v, bias)  # (B, H, Tq, hd)
        else:
            mask = None if bias is None else bias.to(q.dtype)
            if prefers_explicit(q, k, mask=mask):  # CPU: two GEMMs beat SDPA's kernel
                y = explicit_attention(q, k, v, mask=mask, scale=1.0)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        y = y.transpose(1, 2).reshape(B, Tq, H * hd)  # (B, Tq, H*hd): heads side by side
        return self.o(y)


class GatedGeluMLP(nn.Module):
    """``down(gelu_tanh(gate(x)) * up(x))``: T5 v1.1's feed-forward (HF ``gated-gelu``).

    HF maps ``gated-gelu`` to ``gelu_new``, the tanh approximation; ``gate`` is HF ``wi_0``,
    ``up`` is ``wi_1``, ``down`` is ``wo``.
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(recomputed_when_compiled(_gelu_gate, self.gate(x), self.up(x)))


def _gelu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


class EncoderBlock(nn.Module):
    """Pre-norm: ``x = x + attn(norm(x))`` then ``x = x + mlp(norm(x))``."""

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, feeds_linear=True)
        self.attn = T5Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, feeds_linear=True)
        self.mlp = GatedGeluMLP(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias)
        return x + self.mlp(self.mlp_norm(x))


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the encoder, then the MLP."""

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, feeds_linear=True)
        self.attn = T5Attention(cfg)
        self.cross_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, feeds_linear=True)
        self.cross_attn = T5Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, feeds_linear=True)
        self.mlp = GatedGeluMLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor | None,
        memory: torch.Tensor,
        cross_bias: torch.Tensor | None,
        self_cache: AttentionCache | None = None,
        cross_cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), self_bias, cache=self_cache)
        x = x + self.cross_attn(self.cross_norm(x), cross_bias, memory, cross_cache)
        return x + self.mlp(self.mlp_norm(x))


class EncoderDecoderLM(nn.Module):
    """Shared embedding, encoder and decoder stacks with their final norms, untied LM head."""

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared: encoder and decoder
        self.encoder_position_bias = RelativePositionBias(cfg, bidirectional=True)
        self.decoder_position_bias = RelativePositionBias(cfg, bidirectional=False)
        # One list for wrappers (FSDP, activation checkpointing): encoder blocks, then decoder.
        self.blocks = nn.ModuleList(
            [EncoderBlock(cfg) for _ in range(cfg.n_layers)]
            + [DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers)]
        )
        self.encoder_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    @property
    def encoder_blocks(self) -> list[EncoderBlock]:
        return list(self.blocks[: self.cfg.n_layers])

    @property
    def decoder_blocks(self) -> list[DecoderBlock]:
        return list(self.blocks[self.cfg.n_layers :])

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-draw every parameter with HF T5's rules, but for the LM head; safe after
        ``to_empty``.

        With ``f = init_factor``: embedding N(0, f); query N(0, f (d_model d_kv)^-1/2) (the
        folded 1/sqrt(d_kv) score scaling); key and value N(0, f d_model^-1/2); attention
        output N(0, f (n_heads d_kv)^-1/2); MLP gate and up N(0, f d_model^-1/2), down
        N(0, f d_ff^-1/2); relative position tables N(0, f d_model^-1/2); norm weights f.

        The LM head is N(0, f d_model^-1/2), the fan-in scaling of T5.1.1's own code (t5x's
        ``logits_dense``, a ``DenseGeneral`` with its default ``variance_scaling(1.0,
        "fan_in")``), where HF draws N(0, f): the logits start at unit scale and a fresh
        model's loss near ln(vocabulary), not at some 30 nats.
        """
        cfg, f = self.cfg, self.cfg.init_factor
        d, inner = cfg.d_model, cfg.n_heads * cfg.d_kv
        nn.init.normal_(self.embed.weight, std=f)
        nn.init.normal_(self.lm_head.weight, std=f * d**-0.5)
        for table in (self.encoder_position_bias, self.decoder_position_bias):
            nn.init.normal_(table.embed.weight, std=f * d**-0.5)
        for m in self.modules():
            if isinstance(m, nn.RMSNorm):
                nn.init.constant_(m.weight, f)
            elif isinstance(m, T5Attention):
                nn.init.normal_(m.q.weight, std=f * (d * cfg.d_kv) ** -0.5)
                nn.init.normal_(m.k.weight, std=f * d**-0.5)
                nn.init.normal_(m.v.weight, std=f * d**-0.5)
                nn.init.normal_(m.o.weight, std=f * inner**-0.5)
            elif isinstance(m, GatedGeluMLP):
                nn.init.normal_(m.gate.weight, std=f * d**-0.5)
                nn.init.normal_(m.up.weight, std=f * d**-0.5)
                nn.init.normal_(m.down.weight, std=f * cfg.d_ff**-0.5)

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab_size, d_model) projection from decoder hidden states to logits: the LM head."""
        return self.lm_head.weight

    def forward(self, batch: ModelBatch) -> torch.Tensor:
        """Decoder hidden states (B, T_dec, d_model) after the final decoder norm.

        The encoder reads ``batch.input_ids`` under ``batch.attention`` (bidirectional; document
        ids keep packed inputs apart) with pad tokens masked as keys; the decoder reads
        ``batch.decoder_input_ids`` causally and cross-attends to the non-pad encoder positions.

        Raises:
            ValueError: when ``batch.decoder_input_ids`` is missing.
        """
        if batch.decoder_input_ids is None:
            raise ValueError(
                f"encoder_decoder model needs decoder_input_ids; objective {batch.objective!r} "
                "gave none"
            )
        encoder_mask = batch.input_ids != self.cfg.pad_id  # (B, T_enc): visible keys
        memory = self.encode(batch.input_ids, batch.attention)
        return self.decode(batch.decoder_input_ids, memory, encoder_mask)

    def encode(
        self, input_ids: torch.Tensor, attention: AttentionSpec | None = None
    ) -> torch.Tensor:
        """Encoder output (B, T, d_model) after its final norm (HF ``encoder_last_hidden_state``).

        Args:
            input_ids: (B, T) token ids; ``pad_id`` tokens are masked out as keys.
            attention: who attends to whom; None means bidirectional. ``document_ids`` keep
                packed documents apart (other kinds are honoured too, through the shared
                :func:`~pretrain.models.common.attention.attention_mask`).
        """
        B, T = input_ids.shape
        spec = attention if attention is not None else AttentionSpec(kind="bidirectional")
        keys = input_ids != self.cfg.pad_id  # (B, T): visible keys
        if self.uses_flex(spec):
            position = to_autocast_dtype(self.encoder_position_bias(T, T))[0]  # (H, T, T)
            scores = FlexScores(flex.block_mask(spec, T, keys=keys), position)
            x = self.embed(input_ids)
            for block in self.encoder_blocks:
                x = block(x, scores)
            return self.encoder_norm(x)
        allowed = attention_mask(spec, T, input_ids.device)  # (B, 1, T, T) or None
        if allowed is None and spec.kind == "causal":
            idx = torch.arange(T, device=input_ids.device)
            allowed = (idx[None, :] <= idx[:, None])[None, None]  # (1, 1, T, T)
        if allowed is not None or not all_visible_on_cpu(keys):
            keys = keys[:, None, None, :]  # (B, 1, 1, T)
            allowed = keys if allowed is None else allowed & keys  # (B, 1, T|1, T)
        bias = additive_bias(self.encoder_position_bias(T, T), allowed)  # (B|1, H, T, T)
        bias = to_autocast_dtype(bias)
        x = self.embed(input_ids)  # (B, T, d_model)
        for block in self.encoder_blocks:
            x = block(x, bias)
        return self.encoder_norm(x)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Decoder hidden states (B, T_dec, d_model) after the final decoder norm.

        Args:
            decoder_input_ids: (B, T_dec) ids, the labels shifted right behind
                ``cfg.decoder_start_id``; attended causally.
            encoder_hidden: (B, T_enc, d_model) output of :meth:`encode`.
            encoder_mask: (B, T_enc) bool, True at the encoder positions to cross-attend to
                (the non-pad ones); None means all.
            cache: for generation (:meth:`new_decoder_cache`): ``decoder_input_ids`` are the
                positions after those cached, and attend causally to them and to themselves.
        """
        T = decoder_input_ids.shape[1]
        if cache is None and flex.enabled(self.cfg.attention_backend, decoder_input_ids.device):
            return self._decode_flex(decoder_input_ids, encoder_hidden, encoder_mask)
        offset = 0 if cache is None else cache.length
        causal = cached_causal_mask(T, offset, decoder_input_ids.device)[None, None]
        position = self.decoder_position_bias(T, offset + T, q_offset=offset)
        self_bias = additive_bias(position, causal)  # (1, H, T, offset + T)
        self_bias = to_autocast_dtype(self_bias)
        cross_bias = None
        if encoder_mask is not None:
            cross_bias = additive_bias(None, encoder_mask.bool()[:, None, None, :])  # (B,1,1,Tk)
            cross_bias = to_autocast_dtype(cross_bias)
        x = self.embed(decoder_input_ids)  # (B, T_dec, d_model)
        for i, block in enumerate(self.decoder_blocks):
            if cache is None:
                x = block(x, self_bias, encoder_hidden, cross_bias)
            else:
                caches = cache.self_attention[i], cache.cross_attention[i]
                x = block(x, self_bias, encoder_hidden, cross_bias, *caches)
        if cache is not None:
            cache.length += T
        return self.decoder_norm(x)

    def new_decoder_cache(self) -> DecoderCache:
        """An empty cache for :meth:`decode` to generate with, one token per call."""
        return DecoderCache(self.cfg.n_decoder_layers)

    def _decode_flex(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`decode` through FlexAttention: a causal block mask with the decoder's
        position bias as a ``score_mod``; cross-attention hides pad keys by block mask."""
        T = decoder_input_ids.shape[1]
        device = decoder_input_ids.device
        position = to_autocast_dtype(self.decoder_position_bias(T, T))[0]  # (H, T, T)
        causal = flex.block_mask(AttentionSpec(kind="causal"), T, device=device)
        self_scores = FlexScores(causal, position)
        cross_scores = None
        if encoder_mask is not None:
            cross_scores = FlexScores(flex.key_mask(encoder_mask.bool(), T))
        x = self.embed(decoder_input_ids)
        for block in self.decoder_blocks:
            x = block(x, self_scores, encoder_hidden, cross_scores)
        return self.decoder_norm(x)

    def uses_flex(self, spec: AttentionSpec) -> bool:
        """Whether the encoder runs ``spec`` through FlexAttention (``attention_backend`` flex,
        or auto on CUDA, and a kind a block mask expresses: not ``permutation``)."""
        backend = self.cfg.attention_backend
        return flex.enabled(backend, self.embed.weight.device) and spec.kind != "permutation"

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project decoder hidden states (..., d_model) to float32 logits (no output rescale)."""
        return F.linear(hidden, self.output_weight).float()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count.

        Args:
            exclude_embeddings: leave out the shared input embedding and the two
                relative-position tables (Kaplan et al. 2020's N excludes "all vocabulary and
                positional embeddings"); the untied LM head stays counted.
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            for table in (self.embed, self.encoder_position_bias, self.decoder_position_bias):
                total -= sum(p.numel() for p in table.parameters())
        return total
