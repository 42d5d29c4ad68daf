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

The model returns the last query-stream states, scattered back to their positions
``(B, T, d_model)`` so they line up with ``batch.labels`` (zero where nothing is predicted);
the loss projects them onto the tied word embedding plus ``output_bias`` (HF ``lm_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common.attention import attention_mask
from pretrain.models.common.init import init_normal
from pretrain.models.encoder.model import ErfGeluMLP
from pretrain.models.xlnet.configs import XLNetConfig
from pretrain.objectives.base import AttentionSpec, ModelBatch

# What HF XLNet adds to masked scores; a finite number, so a row with nothing visible stays
# finite (uniform) instead of NaN, as in HF.
MASKED_SCORE = -1e30


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


class TwoStreamAttention(nn.Module):
    """Relative multi-head attention run once per stream with the same weights.

    ``qkv`` rows are ``[q; k; v]`` (HF's ``q``, ``k``, ``v`` of shape (d_model, H, hd),
    flattened); ``pos`` is HF's ``r``, ``out`` its ``o``; no biases but the three per-head
    vectors of Transformer-XL/XLNet.
    """

    def __init__(self, cfg: XLNetConfig) -> None:
        super().__init__()
        d, H, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.head_dim = H, hd
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.pos = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(H, hd))  # r_w_bias
        self.position_bias = nn.Parameter(torch.zeros(H, hd))  # r_r_bias
        self.segment_bias = nn.Parameter(torch.zeros(H, hd))  # r_s_bias
        self.segment_embed = nn.Parameter(torch.zeros(2, H, hd))  # same / other segment
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_pos: torch.Tensor,
        query_pos: torch.Tensor,
        masked: torch.Tensor | None,
        other_segment: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of M queries over T keys; returns ``(B, M, d_model)`` before ``out``.

        Args:
            q: ``(B, M, H, hd)`` queries; k, v: ``(B, T, H, hd)``.
            k_pos: ``(2T, H, hd)`` projected sinusoids of the distances ``T .. -T+1``.
            query_pos: ``(B, M)`` or ``(M,)`` position of each query.
            masked: ``(B, M, T)`` True where the query may not see the key, or None.
            other_segment: ``(B, M, T)`` True where query and key are in different segments.
        """
        B, M, H, hd = q.shape
        T = k.shape[1]
        # Position term for every distance, then for query at i and key j pick distance i - j,
        # which sits at column j + T - i of the sinusoid table (Transformer-XL's rel-shift).
        bd = torch.einsum("bmhd,phd->bhmp", q + self.position_bias, k_pos)  # (B, H, M, 2T)
        keys = torch.arange(T, device=q.device)
        column = keys + T - query_pos[..., None]  # (B|1, M, T)
        column = column.expand(B, M, T)[:, None].expand(B, H, M, T)
        bias = bd.gather(3, column)  # (B, H, M, T)
        if other_segment is not None:
            ef = torch.einsum("bmhd,shd->bhms", q + self.segment_bias, self.segment_embed)
            bias = bias + torch.where(other_segment[:, None], ef[..., 1:], ef[..., :1])
        bias = bias * hd**-0.5  # SDPA scales q·k by the same 1/sqrt(hd)
        if masked is not None:
            bias = bias.masked_fill(masked[:, None], MASKED_SCORE)
        y = F.scaled_dot_product_attention(
            (q + self.content_bias).transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=bias.to(q.dtype),
        )  # (B, H, M, hd)
        return y.transpose(1, 2).reshape(B, M, H * hd)

    def forward(
        self,
        h: torch.Tensor,
        g: torch.Tensor | None,
        sinusoids: torch.Tensor,
        masked: torch.Tensor | None,
        query_pos: torch.Tensor | None,
        query_valid: torch.Tensor | None,
        other_segment: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New ``(h, g)``: content ``(B, T, d)`` and query ``(B, M, d)`` streams.

        ``masked`` is the query-stream mask (B, T, T); the content stream sees its own position.
        ``query_pos`` (B, M) places the query rows (None: one per position); rows whose
        ``query_valid`` is False (target-mapping padding) get no attention output, as in HF.
        """
        B, T, d = h.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = self.qkv(h).view(B, T, 3, H, hd).unbind(2)  # (B, T, H, hd) each
        k_pos = self.pos(sinusoids).view(-1, H, hd)  # (2T, H, hd)
        positions = torch.arange(T, device=h.device)
        content_masked = None
        if masked is not None:
            content_masked = masked & ~torch.eye(T, dtype=torch.bool, device=h.device)
        y = self.attend(q, k, v, k_pos, positions, content_masked, other_segment)
        h_out = self.norm(h + self.out(y))
        if g is None:
            return h_out, None
        M = g.shape[1]
        q_g = F.linear(g, self.qkv.weight[:d]).view(B, M, H, hd)
        if query_pos is None:
            g_masked, g_segment, g_pos = masked, other_segment, positions
        else:
            rows = query_pos[..., None].expand(B, M, T)
            g_pos = query_pos
            g_masked = None if masked is None else masked.gather(1, rows)
            g_segment = None if other_segment is None else other_segment.gather(1, rows)
        y_g = self.attend(q_g, k, v, k_pos, g_pos, g_masked, g_segment)
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

    def forward(self, h, g, sinusoids, masked, query_pos, query_valid, other_segment):
        h, g = self.attn(h, g, sinusoids, masked, query_pos, query_valid, other_segment)
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
            for p in (a.content_bias, a.position_bias, a.segment_bias, a.segment_embed):
                nn.init.normal_(p, mean=0.0, std=std)
        nn.init.normal_(self.mask_embed, mean=0.0, std=std)
        nn.init.zeros_(self.output_bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab_size, d_model) projection from query-stream states to logits: the embedding."""
        return self.embed.weight

    def forward(self, batch: ModelBatch) -> torch.Tensor:
        """Query-stream outputs ``(B, T, d_model)`` at the positions of ``batch.labels``."""
        g = self.streams(batch.input_ids, batch.attention, batch.target_mapping)[1]
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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        """
        B, T = input_ids.shape
        spec = attention if attention is not None else AttentionSpec(kind="bidirectional")
        allowed = attention_mask(spec, T, input_ids.device)  # (B, 1, T, T) or None
        masked = None if allowed is None else ~allowed[:, 0].expand(B, T, T)
        other_segment = None
        if token_type_ids is not None:
            other_segment = token_type_ids[:, :, None] != token_type_ids[:, None, :]
        h = self.embed(input_ids)  # (B, T, d)
        g = query_pos = query_valid = None
        if query_stream:
            if target_mapping is not None:
                M = target_mapping.shape[1]
                query_pos = target_mapping.argmax(-1)  # (B, M)
                query_valid = target_mapping.sum(-1) > 0  # (B, M)
            else:
                M = T
            g = self.mask_embed.to(h.dtype).expand(B, M, -1)
        sinusoids = relative_sinusoids(T, self.cfg.d_model, self.cfg.clamp_len, h.device)
        sinusoids = sinusoids.to(h.dtype)
        for block in self.blocks:
            h, g = block(h, g, sinusoids, masked, query_pos, query_valid, other_segment)
        return h, g

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
