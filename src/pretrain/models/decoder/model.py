"""Decoder-only transformer language model, Llama-style or GPT-2-style.

* Llama (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models"):
  pre-norm RMSNorm (Zhang & Sennrich 2019), rotary positions (Su et al. 2021), SwiGLU MLP
  (Shazeer 2020), grouped-query attention (Ainslie et al. 2023), no biases.
* GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"):
  pre-norm LayerNorm, learned absolute positions, GELU MLP, biases, scaled residual init.

The model returns final-normed hidden states, not logits: the loss projects them onto the
vocabulary in chunks through :attr:`DecoderLM.output_weight`, so the full (B, T, V) fp32 logits
never exist during training. The module is single-device; distributed wrappers iterate
:attr:`DecoderLM.blocks` from outside.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import flex
from pretrain.models.common.attention import (
    Attention,
    KVCache,
    attention_mask,
    cached_causal_mask,
)
from pretrain.models.common.init import init_normal, init_residual_output, residual_std
from pretrain.models.common.mlp import GeluMLP, SwiGLU
from pretrain.models.common.moe import MoE, load_balancing_loss
from pretrain.models.common.norms import make_norm
from pretrain.models.common.positions import RotaryEmbedding
from pretrain.models.decoder.configs import DecoderConfig
from pretrain.objectives.base import AttentionSpec, ModelBatch


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        norm_kind = "rms" if cfg.style == "llama" else "layer"
        self.attn_norm = make_norm(
            norm_kind, cfg.d_model, cfg.norm_eps, bias=cfg.bias, feeds_linear=True
        )
        self.attn = Attention(
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            bias=cfg.bias,
            qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps,
            layer_idx=layer_idx,
        )
        self.mlp_norm = make_norm(
            norm_kind, cfg.d_model, cfg.norm_eps, bias=cfg.bias, feeds_linear=True
        )
        if cfg.n_experts:
            self.mlp: nn.Module = MoE(cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.experts_per_token)
        else:
            mlp_cls = SwiGLU if cfg.style == "llama" else GeluMLP
            self.mlp = mlp_cls(cfg.d_model, cfg.d_ff, bias=cfg.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        # by keyword past x: tensor parallelism's input plan (PrepareModuleInput) lays out
        # the one positional input
        attended = self.attn(
            self.attn_norm(x), rope=rope, mask=mask, is_causal=is_causal, kv_cache=kv_cache
        )
        x = x + attended
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nn.Module):
    """A stack of :class:`Block` between a token embedding and a final norm."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.style == "gpt2":
            self.pos_embed: nn.Embedding | None = nn.Embedding(cfg.max_seq_len, cfg.d_model)
            self.rope: RotaryEmbedding | None = None
        else:
            self.pos_embed = None
            self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        norm_kind = "rms" if cfg.style == "llama" else "layer"
        self.norm = make_norm(norm_kind, cfg.d_model, cfg.norm_eps, bias=cfg.bias)
        self.lm_head = (
            None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-draw every parameter (and rebuild the RoPE tables); safe after ``to_empty``.

        N(0, init_std) for linear and embedding weights, zero biases, unit norm weights, and
        ``init_std / sqrt(2 * n_layers)`` for the residual output projections (GPT-2).
        """
        cfg = self.cfg
        init_normal(self, cfg.init_std)
        for block in self.blocks:
            init_residual_output(block.attn.out, cfg.init_std, cfg.n_layers)
            if isinstance(block.mlp, MoE):
                block.mlp.init_weights(cfg.init_std, residual_std(cfg.init_std, cfg.n_layers))
            else:
                init_residual_output(block.mlp.down, cfg.init_std, cfg.n_layers)
        if self.rope is not None:
            self.rope.reset_parameters()

    def router_aux_loss(self) -> torch.Tensor | None:
        """The load-balancing loss of the last forward's routing over every MoE layer
        (:func:`~pretrain.models.common.moe.load_balancing_loss`), already weighted by
        ``router_aux_loss_coef``; None for a dense model. Reading it lets go of the routing."""
        # (getattr: a pipeline stage holds parameter-free stand-ins for other stages' blocks)
        layers = [b.mlp for b in self.blocks if isinstance(getattr(b, "mlp", None), MoE)]
        if not layers or layers[0].router_logits is None:
            return None
        logits = [layer.router_logits for layer in layers]
        for layer in layers:
            layer.router_logits = None
        balance = load_balancing_loss(logits, self.cfg.experts_per_token)
        return self.cfg.router_aux_loss_coef * balance

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab_size, d_model) projection from hidden states to logits."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, batch: ModelBatch) -> torch.Tensor:
        """Final-normed hidden states (B, T, d_model) for ``batch``; see :meth:`forward_tokens`."""
        return self.forward_tokens(batch.input_ids, batch.position_ids, batch.attention)

    def forward_tokens(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention: AttentionSpec | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, d_model) after the final norm.

        Args:
            input_ids: (B, T) token ids.
            position_ids: (B, T) positions; None means ``0..T-1``, or ``offset..offset+T-1``
                after the ``offset`` positions already in ``kv_cache``.
            attention: who attends to whom; None means causal.
            kv_cache: decoding cache; this call's keys/values are appended and the queries
                attend causally over everything cached. With a cache, attention is causal
                without document ids, or, for the first call (an empty cache), a ``prefix``
                spec: a prefix LM's prompt, bidirectional over itself.
        """
        T = input_ids.shape[1]
        offset = 0 if kv_cache is None else kv_cache.length
        mask, is_causal = self.attention_inputs(attention, T, input_ids.device, kv_cache)
        x = self.embed_tokens(input_ids, position_ids, offset)  # (B, T, d_model)
        rope = self.rotary(T, position_ids, offset)
        x = self.run_blocks(x, rope, mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm(x)

    # The steps of forward_tokens, which a pipeline's stages run in parts
    # (pretrain.distributed.pipeline_parallel).

    def attention_inputs(
        self,
        attention: AttentionSpec | None,
        T: int,
        device: torch.device,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor | None, bool]:
        """``(mask, is_causal)`` for the blocks' attention over ``T`` new positions (the mask a
        boolean SDPA mask or, with FlexAttention, a ``BlockMask``)."""
        offset = 0 if kv_cache is None else kv_cache.length
        spec = attention if attention is not None else AttentionSpec()
        if kv_cache is None:
            if flex.enabled(self.cfg.attention_backend, device) and flex.supports(spec):
                return flex.block_mask(spec, T), False
            mask = attention_mask(spec, T, device)
            return mask, mask is None and spec.kind == "causal"
        if spec.kind == "prefix" and offset == 0 and spec.document_ids is None:
            return attention_mask(spec, T, device), False  # (B, 1, T, T)
        if spec.kind != "causal" or spec.document_ids is not None:
            raise ValueError(
                "a KV cache supports causal attention without document_ids (or a prefix "
                "spec on an empty cache)"
            )
        # One new token sees every cached key; several need the bottom-right triangle.
        mask = cached_causal_mask(T, offset, device) if offset and T > 1 else None
        return mask, offset == 0 and T > 1

    def embed_tokens(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, offset: int = 0
    ) -> torch.Tensor:
        """Token embeddings (B, T, d_model), plus learned positions for GPT-2 style."""
        x = self.embed(input_ids)
        if self.pos_embed is None:
            return x
        T = input_ids.shape[1]
        if position_ids is None:
            if offset + T > self.cfg.max_seq_len:
                raise ValueError(
                    f"sequence of {offset + T} positions exceeds max_seq_len "
                    f"{self.cfg.max_seq_len} (learned positions)"
                )
            position_ids = torch.arange(offset, offset + T, device=input_ids.device)
        return x + self.pos_embed(position_ids)  # (B or 1, T, d_model) broadcast

    def rotary(
        self, T: int, position_ids: torch.Tensor | None, offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """RoPE's cos, sin (B or 1, T, 1, head_dim) for Llama style; None for GPT-2 style."""
        return None if self.rope is None else self.rope(T, offset, position_ids)

    def run_blocks(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None = None,
        blocks: Iterable[nn.Module] | None = None,
    ) -> torch.Tensor:
        """The residual stream through every block (or through ``blocks``, a pipeline
        stage's)."""
        for block in self.blocks if blocks is None else blocks:
            x = block(x, rope, mask, is_causal, kv_cache)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states (..., d_model) to float32 logits (..., vocab_size)."""
        return F.linear(hidden, self.output_weight).float()

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        param = self.embed.weight
        return KVCache(
            self.cfg.n_layers,
            batch_size,
            self.blocks[0].attn.n_kv_heads,  # this rank's share under tensor parallelism
            self.cfg.head_dim,
            max_len,
            dtype=param.dtype,
            device=param.device,
        )

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once).

        Args:
            exclude_embeddings: leave out the input token and position embeddings (Kaplan et
                al. 2020's N). An untied output head is still counted; a tied one is the
                embedding and is left out with it.
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embed.weight.numel()
            if self.pos_embed is not None:
                total -= self.pos_embed.weight.numel()
        return total
