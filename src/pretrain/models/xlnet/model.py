"""XLNet: two-stream self-attention with Transformer-XL relative positions.

Yang et al. 2019, "XLNet: Generalized Autoregressive Pretraining for Language Understanding",
§2.3 and Figure 1: every block runs two streams with the same weights.

* The **content stream** ``h`` starts from the word embeddings and may see its own token: it
  is the usual Transformer representation, and the keys and values of both streams.
* The **query stream** ``g`` starts from a learned mask embedding and never sees the content
  at its own position (``permutation_mask`` keeps the diagonal); the LM loss is read from it,
  so a target is predicted from its position and the tokens before it in the order only.

Attention is Transformer-XL's (Dai et al. 2019, §3.3): ``score = (q + r_w_bias)·k +
(q + r_r_bias)·W_r R(i - j)`` (+ the segment term of XLNet §2.5 when token types are given),
with ``R`` the sinusoids of the relative distance. Blocks are post-norm, as in HF
``XLNetLayer``: ``x = LN(x + attn(x))``, ``x = LN(x + mlp(x))``, the MLP being shared by both
streams. There is no dropout and no memory.

``position_encoding="rope"`` replaces the position term by rotary embeddings of q and k (Su et
al. 2021), ``q + r_w_bias`` rotated too, so every score depends on ``i - j`` only.
``attention_backend="flex"`` runs both streams through FlexAttention (``xlnet/flex.py``);
the default runs SDPA with one dense float bias per stream.

The model returns the last query-stream states, scattered back to their positions
``(B, T, d_model)`` so they line up with ``batch.labels`` (zero where nothing is predicted);
the loss projects them onto the tied word embedding plus ``output_bias`` (HF ``lm_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import flex as common_flex
from pretrain.models.common.attention import MASKED_SCORE, attention_mask
from pretrain.models.common.explicit_attention import explicit_attention, prefers_explicit
from pretrain.models.common.init import init_normal
from pretrain.models.common.positions import apply_rotary, rope_cos_sin, rope_inv_freq
from pretrain.models.common.recompute import recomputed
from pretrain.models.encoder.model import ErfGeluMLP
from pretrain.models.xlnet.configs import XLNetConfig
from pretrain.models.xlnet.flex import (
    StreamRule,
    factorization_layout,
    flex_two_stream_attention,
    stream_rules,
)
from pretrain.objectives.base import AttentionSpec, ModelBatch


def relative_sinusoids(seq_len: int, d_model: int, clamp_len: int, device) -> torch.Tensor:
    """``(2T, d_model)`` ``[sin, cos]`` of the distances ``T, T-1, ..., -T+1`` (HF's
    ``relative_positional_encoding`` for ``attn_type="bi"``, computed the same way)."""
    freq = torch.arange(0, d_model, 2.0, dtype=torch.int64, device=device).float()
    inv_freq = 1 / torch.pow(10000, freq / d_model)
    distance = torch.arange(seq_len, -seq_len, -1.0, dtype=torch.int64, device=device).float()
    if clamp_len > 0:
        distance = distance.clamp(-clamp_len, clamp_len)
    angle = distance[:, None] * inv_freq
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


@dataclass(frozen=True)
class Positions:
    """Position information shared by every layer of one forward.

    Attributes:
        sinusoids: ``(2T, d_model)`` Transformer-XL sinusoids of the distances ``T .. -T+1``
            (``position_encoding="txl"``), else None.
        cos, sin: ``(T, head_dim)`` rotary tables by position (``position_encoding="rope"``),
            else None.
        row_cos, row_sin: the content stream's rows' tables, ``(T, 1, head_dim)`` in input
            order or ``(B, T, 1, head_dim)`` in a factorization layout (rope), else None.
    """

    sinusoids: torch.Tensor | None = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    row_cos: torch.Tensor | None = None
    row_sin: torch.Tensor | None = None


@dataclass(frozen=True)
class DenseRule:
    """One stream's visibility for the SDPA path: ``(B, M, T)`` tensors (None: not needed)."""

    masked: torch.Tensor | None  # True where the query may NOT see the key
    other_segment: torch.Tensor | None  # True where query and key are in different segments
    query_pos: torch.Tensor  # (B, M) or (M,) position of each query row


def dense_rules(
    spec: AttentionSpec,
    batch_size: int,
    seq_len: int,
    device,
    query_pos: torch.Tensor | None,
    token_types: torch.Tensor | None,
) -> tuple[DenseRule, DenseRule]:
    """The content-stream and query-stream rules of the SDPA path, built once per forward.

    ``spec`` gives the query-stream mask (XLNet's ``perm_mask``); the content stream also sees
    its own position. ``query_pos`` ``(B, M)`` selects the query stream's rows (None: one per
    position).
    """
    B, T = batch_size, seq_len
    allowed = attention_mask(spec, T, device)  # (B, 1, T, T) or None
    masked = None if allowed is None else ~allowed[:, 0].expand(B, T, T)
    other = None if token_types is None else token_types[:, :, None] != token_types[:, None, :]
    positions = torch.arange(T, device=device)
    content_masked = None
    if masked is not None:
        content_masked = masked & ~torch.eye(T, dtype=torch.bool, device=masked.device)
    content = DenseRule(content_masked, other, positions)
    if query_pos is None:
        return content, DenseRule(masked, other, positions)
    rows = query_pos[..., None].expand(B, query_pos.shape[1], T)
    query = DenseRule(
        None if masked is None else masked.gather(1, rows),
        None if other is None else other.gather(1, rows),
        query_pos,
    )
    return content, query


class TwoStreamAttention(nn.Module):
    """Relative multi-head attention run once per stream with the same weights.

    ``qkv`` rows are ``[q; k; v]`` (HF's ``q``, ``k``, ``v`` of shape (d_model, H, hd),
    flattened); ``pos`` is HF's ``r``, ``out`` its ``o``; no biases but the three per-head
    vectors of Transformer-XL/XLNet. With ``position_encoding="rope"`` there is no ``pos`` and
    no ``position_bias``: queries and keys are rotated by their positions instead.
    """

    def __init__(self, cfg: XLNetConfig) -> None:
        super().__init__()
        d, H, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.head_dim = H, hd
        self.rope = cfg.position_encoding == "rope"
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        if not self.rope:
            self.pos = nn.Linear(d, d, bias=False)
            self.position_bias = nn.Parameter(torch.zeros(H, hd))  # r_r_bias
        self.out = nn.Linear(d, d, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(H, hd))  # r_w_bias
        self.segment_bias = nn.Parameter(torch.zeros(H, hd))  # r_s_bias
        self.segment_embed = nn.Parameter(torch.zeros(2, H, hd))  # same / other segment
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)

    def fused_projections(self) -> dict[str, tuple[int, ...]]:
        """``qkv``'s blocks of output rows: HF's q, k and v."""
        d = self.qkv.out_features // 3
        return {"qkv": (d, d, d)}

    def score_tables(
        self, q: torch.Tensor, k_pos: torch.Tensor | None, segments: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scaled position scores ``(B, H, M, 2T)`` of every distance (None under RoPE) and
        segment scores ``(B, H, M, 2)`` (same, other; None without segments) for ``q``."""
        scale = self.head_dim**-0.5  # the kernels scale q·k by the same 1/sqrt(hd)
        position = segment = None
        if k_pos is not None:
            position = torch.einsum("bmhd,phd->bhmp", q + self.position_bias, k_pos) * scale
        if segments:
            segment = torch.einsum("bmhd,shd->bhms", q + self.segment_bias, self.segment_embed)
            segment = segment * scale
        return position, segment

    def attend(
        self,
        q: torch.Tensor,
        q_content: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_pos: torch.Tensor | None,
        rule: DenseRule | StreamRule,
    ) -> torch.Tensor:
        """Attention of M queries over T keys ``(B, T, H, hd)``; returns ``(B, M, d_model)``
        before ``out``.

        Args:
            q: ``(B, M, H, hd)`` queries, for the position and segment terms.
            q_content: the queries that meet the keys: ``q + r_w_bias`` (rotated under RoPE,
                as the keys are).
            k_pos: ``(2T, H, hd)`` projected sinusoids; None under RoPE.
            rule: what each query may see (SDPA or FlexAttention form).
        """
        B, M, H, hd = q.shape
        T = k.shape[1]
        segments = (
            rule.other_segment is not None
            if isinstance(rule, DenseRule)
            else rule.query_types is not None
        )
        q_c, k, v = q_content.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if isinstance(rule, StreamRule):
            # FlexAttention keeps its captured tables for its backward; a compiled step
            # rebuilds them there from q instead (one matmul; common/recompute.py)
            position, segment = recomputed(self.score_tables, q, k_pos, segments)
            y = flex_two_stream_attention(q_c, k, v, rule, position, segment)
        else:
            position, segment = self.score_tables(q, k_pos, segments)
            bias = None
            if position is not None:
                # Query at i and key j: distance i - j sits at column j + T - i of the table
                # (Transformer-XL's rel-shift).
                keys = torch.arange(T, device=q.device)
                column = keys + T - rule.query_pos[..., None]  # (B|1, M, T)
                column = column.expand(B, M, T)[:, None].expand(B, H, M, T)
                bias = position.gather(3, column)  # (B, H, M, T)
            if segment is not None:
                other = rule.other_segment[:, None]
                seg = torch.where(other, segment[..., 1:], segment[..., :1])
                bias = seg if bias is None else bias + seg
            if rule.masked is not None:
                if bias is None:
                    bias = torch.zeros(B, 1, M, T, dtype=q.dtype, device=q.device)
                bias = bias.masked_fill(rule.masked[:, None], MASKED_SCORE)
            mask = None if bias is None else bias.to(q.dtype)
            q_c = q_c.to(v.dtype)  # + r_w_bias made it fp32 under autocast; SDPA casts it too
            if prefers_explicit(q_c, k, mask=mask):  # CPU: two GEMMs beat SDPA's kernel
                y = explicit_attention(q_c, k, v, mask=mask)  # (B, H, M, hd)
            else:
                y = F.scaled_dot_product_attention(q_c, k, v, attn_mask=mask)  # (B, H, M, hd)
        return y.transpose(1, 2).reshape(B, M, H * hd)

    def forward(
        self,
        h: torch.Tensor,
        g: torch.Tensor | None,
        positions: Positions,
        content_rule: DenseRule | StreamRule,
        query_rule: DenseRule | StreamRule | None,
        query_valid: torch.Tensor | None,
        content_output: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """New ``(h, g)``: content ``(B, T, d)`` and query ``(B, M, d)`` streams.

        ``content_rule`` and ``query_rule`` say what each stream sees (the content stream also
        sees its own position); query rows whose ``query_valid`` is False (target-mapping
        padding) get no attention output, as in HF. ``content_output=False`` (the last layer,
        when only the query stream is read) computes the keys and values of ``h`` for the
        query stream and nothing else; ``h`` comes back None.
        """
        B, T, d = h.shape
        H, hd = self.n_heads, self.head_dim
        k_pos = None if self.rope else self.pos(positions.sinusoids).view(-1, H, hd)  # (2T,H,hd)
        if content_output:
            q, k, v = self.qkv(h).view(B, T, 3, H, hd).unbind(2)  # (B, T, H, hd) each
        else:
            q = None
            k, v = F.linear(h, self.qkv.weight[d:]).view(B, T, 2, H, hd).unbind(2)
        if self.rope:  # (q + u) rotated too, so every q·k term depends on i - j only
            cos, sin = positions.row_cos, positions.row_sin
            k = apply_rotary(k, cos, sin)
        h_out = None
        if content_output:
            q_content = q + self.content_bias
            if self.rope:
                q_content = apply_rotary(q_content, cos, sin)
            y = self.attend(q, q_content, k, v, k_pos, content_rule)
            h_out = self.norm(h + self.out(y))
        if g is None:
            return h_out, None
        M = g.shape[1]
        q_g = F.linear(g, self.qkv.weight[:d]).view(B, M, H, hd)
        q_g_content = q_g + self.content_bias
        if self.rope:
            rows = query_rule.query_pos.expand(B, M)
            cos, sin = positions.cos[rows][:, :, None], positions.sin[rows][:, :, None]
            q_g_content = apply_rotary(q_g_content, cos, sin)  # (B, M, 1, hd) tables
        y_g = self.attend(q_g, q_g_content, k, v, k_pos, query_rule)
        if query_valid is not None:
            y_g = y_g * query_valid[..., None].to(y_g.dtype)
        return h_out, self.norm(g + self.out(y_g))


class XLNetBlock(nn.Module):
    """Two-stream attention, then the same post-norm MLP on each stream."""

    def __init__(self, cfg: XLNetConfig) -> None:
        super().__init__()
        self.attn = TwoStreamAttention(cfg)
        self.mlp = ErfGeluMLP(cfg.d_model, cfg.d_ff, bias=True)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h, g, positions, content_rule, query_rule, query_valid, content_output=True):
        h, g = self.attn(h, g, positions, content_rule, query_rule, query_valid, content_output)
        if h is not None:
            h = self.mlp_norm(h + self.mlp(h))
        if g is not None:
            g = self.mlp_norm(g + self.mlp(g))
        return h, g


class XLNetLM(nn.Module):
    """Word embedding, mask embedding, a stack of :class:`XLNetBlock`, tied output + bias."""

    # Pretraining passes no token types, so the segment terms get no gradient (as in HF);
    # data-parallel wrappers read this to look for unused parameters.
    has_unused_parameters = True

    def __init__(self, cfg: XLNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.mask_embed = nn.Parameter(torch.zeros(cfg.d_model))  # query stream's input
        self.blocks = nn.ModuleList(XLNetBlock(cfg) for _ in range(cfg.n_layers))
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-draw every parameter (HF ``XLNetPreTrainedModel._init_weights``); safe after
        ``to_empty``: N(0, init_std) for every matrix, embedding, the per-head biases, the
        segment embeddings and the mask embedding; zero linear and output biases; unit norms."""
        std = self.cfg.init_std
        init_normal(self, std)
        for block in self.blocks:
            a = block.attn
            biases = [a.content_bias, a.segment_bias, a.segment_embed]
            if not a.rope:
                biases.append(a.position_bias)
            for p in biases:
                nn.init.normal_(p, mean=0.0, std=std)
        nn.init.normal_(self.mask_embed, mean=0.0, std=std)
        nn.init.zeros_(self.output_bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab_size, d_model) projection from query-stream states to logits: the embedding."""
        return self.embed.weight

    def forward(self, batch: ModelBatch) -> torch.Tensor:
        """Query-stream outputs ``(B, T, d_model)`` at the positions of ``batch.labels``."""
        g = self.streams(
            batch.input_ids, batch.attention, batch.target_mapping, content_output=False
        )[1]
        if batch.target_mapping is None:
            return g
        # One-hot rows back to their positions; positions nobody predicts get zeros.
        return torch.einsum("bmt,bmd->btd", batch.target_mapping.to(g.dtype), g)

    def streams(
        self,
        input_ids: torch.Tensor,
        attention: AttentionSpec | None = None,
        target_mapping: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        query_stream: bool = True,
        content_output: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Last content stream ``(B, T, d)`` and query stream ``(B, M, d)`` (HF ``output_g``).

        Args:
            input_ids: (B, T) token ids (targets keep their real token under XLNet's rule).
            attention: who sees whom; ``permutation`` gives XLNet's ``perm_mask`` (True: i may
                NOT see j) for the query stream, the content stream also seeing itself. None:
                bidirectional.
            target_mapping: ``(B, M, T)`` one-hot rows (zero rows are padding): the query
                stream has one row per target. None: one query row per position (M = T).
            token_type_ids: (B, T) segment ids for XLNet's relative segment term; None: off.
            query_stream: False runs the content stream only (fine-tuning, features), g None.
            content_output: False skips what only the last content stream needs (its
                attention output and MLP; the query stream reads the last layer's keys and
                values, not its output), and returns h None. Training reads g only.
        """
        B, T = input_ids.shape
        spec = attention if attention is not None else AttentionSpec(kind="bidirectional")
        flex = self.uses_flex(spec)
        layout = None  # (B, T): the content stream's rows in factorization order (flex.py)
        if flex and spec.kind == "permutation" and self.cfg.flex_layout == "factorization":
            layout = factorization_layout(spec.key_rank)
            input_ids = input_ids.gather(1, layout)
        h = self.embed(input_ids)  # (B, T, d)
        g = query_pos = query_valid = None
        if query_stream:
            M = T
            if target_mapping is not None:
                M = target_mapping.shape[1]
                query_pos = target_mapping.argmax(-1)  # (B, M)
                query_valid = target_mapping.sum(-1) > 0  # (B, M)
            # Contiguous like every later block's g, so a block compiled on its own
            # (train.compile_scope=blocks) serves the first block with the same graph.
            g = self.mask_embed.to(h.dtype).expand(B, M, -1).contiguous()
        if flex:
            rules = stream_rules(
                B, T, h.device, spec.query_rank, spec.key_rank, query_pos, query_valid,
                token_type_ids, layout,
            )  # fmt: skip
        else:
            rules = dense_rules(spec, B, T, h.device, query_pos, token_type_ids)
        content_rule, query_rule = rules
        positions = self.positions(T, h.dtype, h.device, layout)
        if not (content_output or query_stream):
            raise ValueError("content_output=False needs the query stream")
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            keep = content_output or i < last
            h, g = block(h, g, positions, content_rule, query_rule, query_valid, keep)
        if layout is not None and h is not None:  # rows back to input order
            h = torch.zeros_like(h).scatter(1, layout[..., None].expand_as(h), h)
        return h, g

    def uses_flex(self, spec: AttentionSpec) -> bool:
        """Whether ``spec`` runs through FlexAttention: ``attention_backend`` flex, or auto on
        CUDA, and a rule it expresses without a dense mask (permutation ranks, or plain
        bidirectional)."""
        on = common_flex.enabled(self.cfg.attention_backend, self.embed.weight.device)
        if not on or spec.document_ids is not None:
            return False
        if spec.kind == "permutation":
            return spec.permutation_mask is None and spec.query_rank is not None
        return spec.kind == "bidirectional"

    def positions(
        self, seq_len: int, dtype: torch.dtype, device, layout: torch.Tensor | None = None
    ) -> Positions:
        """The position tables every layer shares for a window of ``seq_len`` whose content
        rows are in input order or in ``layout`` ``(B, T)`` (their positions)."""
        cfg = self.cfg
        if cfg.position_encoding == "rope":
            inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, device)
            cos, sin = rope_cos_sin(torch.arange(seq_len, device=device), inv_freq)
            if layout is None:
                return Positions(cos=cos, sin=sin, row_cos=cos[:, None], row_sin=sin[:, None])
            row_cos, row_sin = cos[layout][:, :, None], sin[layout][:, :, None]
            return Positions(cos=cos, sin=sin, row_cos=row_cos, row_sin=row_sin)
        sinusoids = relative_sinusoids(seq_len, cfg.d_model, cfg.clamp_len, device)
        return Positions(sinusoids=sinusoids.to(dtype))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project states (..., d_model) to float32 logits ``hidden @ W.T + b`` (HF ``lm_loss``)."""
        return F.linear(hidden, self.output_weight, self.output_bias).float()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (the tied output weight once); ``exclude_embeddings`` leaves out the
        word embedding (Kaplan et al. 2020's N)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embed.weight.numel()
        return total
