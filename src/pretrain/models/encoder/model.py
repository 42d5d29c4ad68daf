"""Encoder-only transformer with a masked-LM head: BERT, as RoBERTa also uses it.

* BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding"): word + learned position + token-type embeddings, then LayerNorm; post-norm
  blocks ``x = LN(x + attn(x))``, ``x = LN(x + mlp(x))`` as in Vaswani et al. 2017; exact (erf)
  GELU; biases everywhere; an MLM head ``LN(gelu(dense(x)))`` whose vocabulary projection is
  the word embedding (tied) plus an output-only bias.
* RoBERTa (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach") keeps
  this network and changes the recipe: dynamic masking, no next-sentence prediction, longer
  training on more data (see ``objectives/mlm.py``).

The model returns the output of the MLM head *transform*, not logits: the loss projects it onto
the vocabulary in chunks as ``hidden @ output_weight.T + output_bias``, so the full (B, T, V)
fp32 logits never exist during training. :meth:`EncoderLM.encode` gives the encoder's own
hidden states (before the head) for fine-tuning heads. There is no dropout (BERT used 0.1;
without it, training is deterministic and the HF export, with dropout set to zero, is the same
network in train and eval mode). The module is single-device; distributed wrappers iterate
:attr:`EncoderLM.blocks` from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.common import flex
from pretrain.models.common.attention import Attention, attention_mask
from pretrain.models.common.init import init_normal
from pretrain.models.common.mlp import GeluMLP
from pretrain.models.encoder.configs import EncoderConfig
from pretrain.objectives.base import AttentionSpec, ModelBatch


class ErfGeluMLP(GeluMLP):
    """``down(gelu(up(x)))`` with the exact erf GELU BERT was trained with (HF ``"gelu"``).

    :class:`~pretrain.models.common.mlp.GeluMLP` uses GPT-2's tanh approximation; the two differ
    by up to ~1e-3 per activation, far above the 1e-5 parity bar.
    """

    @staticmethod
    def activation(h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h)


class EncoderBlock(nn.Module):
    """Post-norm block (BERT): ``x = LN(x + attn(x))`` then ``x = LN(x + mlp(x))``."""

    def __init__(self, cfg: EncoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_heads, bias=True, layer_idx=layer_idx)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = ErfGeluMLP(cfg.d_model, cfg.d_ff, bias=True)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        # by keyword past x: tensor parallelism's input plan lays out the positional input
        x = self.attn_norm(x + self.attn(x, mask=mask, is_causal=is_causal))
        return self.mlp_norm(x + self.mlp(x))


class MLMHeadTransform(nn.Module):
    """BERT's ``cls.predictions.transform``: ``LN(gelu(dense(x)))`` before the vocabulary."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


class EncoderLM(nn.Module):
    """Embeddings, a stack of :class:`EncoderBlock`, and the MLM head (transform + tied output)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.embed_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.head = MLMHeadTransform(cfg)
        # The output projection is the word embedding; only this bias is the head's own.
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-draw every parameter (BERT init); safe after ``to_empty``.

        N(0, init_std) for every linear and embedding weight (no depth scaling, unlike GPT-2),
        zero biases and output bias, LayerNorm weight one and bias zero, and a zero padding row
        in the word embedding (as HF ``BertPreTrainedModel`` initializes it).
        """
        init_normal(self, self.cfg.init_std)
        nn.init.zeros_(self.output_bias)
        if self.cfg.pad_id is not None:
            self.embed.weight[self.cfg.pad_id].zero_()

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab_size, d_model) projection from head outputs to logits: the word embedding."""
        return self.embed.weight

    def forward(self, batch: ModelBatch) -> torch.Tensor:
        """MLM head-transform outputs (B, T, d_model) for ``batch``; see :meth:`forward_tokens`."""
        return self.forward_tokens(batch.input_ids, batch.position_ids, batch.attention)

    def forward_tokens(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention: AttentionSpec | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Outputs (B, T, d_model) of the MLM head transform; :meth:`logits` finishes the head.

        Arguments as :meth:`encode`.
        """
        return self.head(self.encode(input_ids, position_ids, attention, token_type_ids))

    def encode(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention: AttentionSpec | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, d_model) of the last block (HF ``last_hidden_state``).

        Args:
            input_ids: (B, T) token ids.
            position_ids: (B, T) positions (e.g. restarting at each packed document); None means
                ``0..T-1``. They must be below ``max_seq_len``.
            attention: who attends to whom; None means bidirectional over the whole row.
                ``document_ids`` keep packed documents from seeing each other.
            token_type_ids: (B, T) segment ids; None means type 0 everywhere (pretraining).
        """
        B, T = input_ids.shape
        spec = attention if attention is not None else AttentionSpec(kind="bidirectional")
        if flex.enabled(self.cfg.attention_backend, input_ids.device) and flex.supports(spec):
            mask, is_causal = flex.block_mask(spec, T), False
        else:
            mask = attention_mask(spec, T, input_ids.device)  # (B, 1, T, T) or None
            is_causal = mask is None and spec.kind == "causal"

        if position_ids is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(
                    f"sequence of {T} positions exceeds max_seq_len {self.cfg.max_seq_len} "
                    "(learned positions)"
                )
            position_ids = torch.arange(T, device=input_ids.device)
        if token_type_ids is None:
            types = self.type_embed.weight[0]  # (d_model,) broadcast: every token is type 0
        else:
            types = self.type_embed(token_type_ids)  # (B, T, d_model)
        # Summed in HF BertEmbeddings' order (word + type, then + position), so fp32 matches.
        x = self.embed(input_ids) + types  # (B, T, d_model)
        x = x + self.pos_embed(position_ids)  # (B or 1, T, d_model) broadcast
        x = self.embed_norm(x)
        for block in self.blocks:
            x = block(x, mask, is_causal)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project head outputs (..., d_model) to float32 logits ``hidden @ W.T + b``."""
        return F.linear(hidden, self.output_weight, self.output_bias).float()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (the tied output weight once).

        Args:
            exclude_embeddings: leave out the word, position and token-type embeddings (Kaplan
                et al. 2020's N). The tied output projection is the word embedding and goes with
                it; the output bias stays counted.
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            for table in (self.embed, self.pos_embed, self.type_embed):
                total -= table.weight.numel()
        return total
