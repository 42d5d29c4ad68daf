"""Training FLOPs of one batch, counted from what each family actually computes.

``6 N + 12 L H Q T`` per token (PaLM App. B; :mod:`pretrain.scaling.flops`) assumes every
token passes every weight, as in a decoder trained with causal LM. The other objectives do
less, and counting them that way inflates their MFU:

* masked LM projects only the selected ~15% of positions onto the vocabulary;
* an encoder-decoder runs its decoder over the targets only (114 per 512 inputs in T5's span
  corruption), and the cross-attention keys and values over the encoder tokens;
* XLNet runs a query stream over the predicted rows next to the content stream, and projects
  the Transformer-XL position sinusoids once per layer.

So the count here follows the batch: 6 FLOPs (forward and backward) per weight per row it
multiplies, plus the attention score and value products, ``2 * 2 * 3 = 12`` FLOPs per query,
key and head dimension under the ``palm`` convention (the full square) or 6 under ``kaplan``.
Weights are the ``nn.Linear`` matrices and the output projection; embedding lookups, norms and
activations are not counted (as in PaLM's and nanoGPT's MFU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from pretrain.objectives.base import ModelBatch
from pretrain.scaling.flops import Attention, attention_factor


def linear_params(module: nn.Module) -> int:
    """Weights of every ``nn.Linear`` in ``module`` (the matrices a row is multiplied by)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class BatchFlops:
    """Training FLOPs of one batch, by kind of product.

    Attributes:
        weights: rows times weight matrices (``nn.Linear`` layers and the output projection).
        positions: XLNet's Transformer-XL position scores, ``(q + r_r_bias)`` against all
            ``2T`` projected distances per query row (0 for the other families).
        attention: the score and value products, under the chosen convention.
    """

    weights: float
    positions: float
    attention: float

    @property
    def total(self) -> float:
        return self.weights + self.positions + self.attention


def batch_flops(model: nn.Module, batch: ModelBatch, attention: Attention = "palm") -> float:
    """Training FLOPs (forward + backward) of ``model`` on ``batch``; see :func:`count_batch`."""
    return count_batch(model, batch, attention).total


def count_batch(model: nn.Module, batch: ModelBatch, attention: Attention = "palm") -> BatchFlops:
    """Training FLOPs of ``model`` on ``batch``, by kind of product.

    Raises:
        ValueError: for a model of no known family, or an unknown ``attention`` convention.
    """
    from pretrain.models.decoder.model import DecoderLM
    from pretrain.models.encoder.model import EncoderLM
    from pretrain.models.encoder_decoder.model import EncoderDecoderLM
    from pretrain.models.spec import matmul_params
    from pretrain.models.xlnet.model import XLNetLM

    k = attention_factor(attention)
    B, T = batch.input_ids.shape
    tokens = B * T
    cfg = model.cfg
    hq = cfg.n_heads * cfg.head_dim
    head = 6.0 * model.output_weight.numel() * batch.num_label_tokens  # labeled rows only
    if isinstance(model, (DecoderLM, EncoderLM)):
        body = 6.0 * (matmul_params(model) - model.output_weight.numel()) * tokens
        return BatchFlops(body + head, 0.0, k * cfg.n_layers * hq * T * tokens)
    if isinstance(model, EncoderDecoderLM):
        weights, scores = _encoder_decoder(model, batch)
        return BatchFlops(weights + head, 0.0, k * scores)
    if isinstance(model, XLNetLM):
        weights, positions, scores = _xlnet(model, batch)
        return BatchFlops(weights + head, positions, k * scores)
    raise ValueError(f"no FLOPs count for {type(model).__name__}")


def _encoder_decoder(model: nn.Module, batch: ModelBatch) -> tuple[float, float]:
    """(weight FLOPs, attention query-key-dimension products): the encoder over the inputs,
    the decoder over the targets, the cross-attention keys and values over the inputs."""
    cfg = model.cfg
    hq = cfg.n_heads * cfg.head_dim
    B, T_enc = batch.input_ids.shape
    T_dec = batch.decoder_input_ids.shape[1]
    enc_tokens, dec_tokens = B * T_enc, B * T_dec
    encoder = sum(linear_params(b) for b in model.encoder_blocks)
    cross_kv = sum(
        b.cross_attn.k.weight.numel() + b.cross_attn.v.weight.numel() for b in model.decoder_blocks
    )
    decoder = sum(linear_params(b) for b in model.decoder_blocks) - cross_kv
    weights = 6.0 * ((encoder + cross_kv) * enc_tokens + decoder * dec_tokens)
    scores = hq * (
        cfg.n_layers * T_enc * enc_tokens  # encoder self-attention
        + cfg.n_decoder_layers * (T_dec + T_enc) * dec_tokens  # decoder self + cross
    )
    return weights, scores


def _xlnet(model: nn.Module, batch: ModelBatch) -> tuple[float, float, float]:
    """(weight FLOPs, position-score FLOPs, attention products) of training, which reads the
    query stream only: every layer's content stream but the last, whose keys and values alone
    are computed; the query stream's rows through the query projection, output and MLP; the
    position sinusoids through each layer's projection once per forward."""
    B, T = batch.input_ids.shape
    rows = T if batch.target_mapping is None else batch.target_mapping.shape[1]
    weights = positions = scores = 0.0
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        a = block.attn
        hq = a.n_heads * a.head_dim
        pos = 0 if a.rope else a.pos.weight.numel()
        qkv = a.qkv.weight.numel()
        full = linear_params(block) - pos
        content = full if i < last else 2 * qkv // 3  # the last layer: keys and values only
        query = full - 2 * qkv // 3  # no keys and values
        weights += 6.0 * (content * B * T + query * B * rows)
        weights += 4.0 * pos * 2 * T  # the sinusoids need no gradient: forward + dW only
        content_rows = T if i < last else 0
        if not a.rope:  # every query row against the 2T projected distances
            positions += 6.0 * 2 * T * hq * B * (content_rows + rows)
        scores += hq * T * B * (content_rows + rows)
    return weights, positions, scores


def step_flops(model: nn.Module, batches: list[ModelBatch], world_size: int = 1) -> float:
    """FLOPs of one optimizer step whose micro-batches are ``batches``, times ``world_size``
    when every rank runs batches like them (an estimate where ranks mask differently; the
    trainer sums each rank's own count instead, :func:`pretrain.train.step_sums.sum_over_ranks`)."""
    return world_size * sum(batch_flops(model, b) for b in batches)


def objective_flops_per_token(cfg: Any, tokenizer: Any, num_batches: int = 4) -> float:
    """Training FLOPs per input token of ``cfg``'s model under its objective, as the trainer
    counts them (:func:`batch_flops` over micro-batches of random tokens): what its MFU
    divides by. The model is built on the meta device, so no weight is allocated.

    Args:
        cfg: an :class:`~pretrain.config.ExperimentConfig`.
        tokenizer: the run's :class:`~pretrain.tokenizer.Tokenizer` (special ids, vocabulary).
        num_batches: micro-batches to average over (masking and spans vary per batch).
    """
    import torch

    from pretrain.data.loader import TokenBatch
    from pretrain.objectives import build_objective, loader_seq_len
    from pretrain.scaling.counts import build_meta_model

    seq_len, batch_size = cfg.train.seq_len, cfg.train.micro_batch_size
    model = build_meta_model(cfg.model, tokenizer.vocab_size, seq_len)
    objective = build_objective(cfg.objective, tokenizer, seq_len, family=cfg.model.family)
    window = loader_seq_len(objective, seq_len) + 1
    generator = torch.Generator().manual_seed(cfg.train.seed)
    flops = tokens = 0.0
    for _ in range(num_batches):
        ids = torch.randint(tokenizer.vocab_size, (batch_size, window), generator=generator)
        zeros = torch.zeros(batch_size, dtype=torch.long)
        batch = objective(TokenBatch(ids, torch.zeros_like(ids), zeros, zeros), generator)
        flops += batch_flops(model, batch)
        tokens += batch.input_ids.numel()
    return flops / tokens
