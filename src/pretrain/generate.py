"""Autoregressive sampling with a KV cache.

The prompt runs once through the model filling the cache; each new token then costs one
single-position forward over the cached keys and values. Sampling follows the usual order:
temperature, then top-k (Fan et al. 2018), then nucleus/top-p (Holtzman et al. 2020).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from pretrain.models.common.attention import KVCache
from pretrain.models.decoder.model import DecoderLM
from pretrain.objectives.base import AttentionSpec

__all__ = ["KVCache", "generate", "sample_next"]

log = logging.getLogger(__name__)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V): greedy when ``temperature <= 0``.

    Args:
        logits: next-token logits.
        temperature: divides the logits; ``<= 0`` means argmax (deterministic).
        top_k: keep only the k most likely tokens (None or 0: all).
        top_p: keep the smallest set of most likely tokens whose probability reaches p.
        generator: source of randomness, for reproducible sampling.

    Returns:
        (B,) int64 token ids.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no top-k), got {top_k}")
    if top_k:  # 0 means off, as in Hugging Face's generate
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p is not None and top_p < 1.0:  # 1.0 keeps everything (a float cumsum might not)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens strictly more likely already reach p; the top one stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def generate(
    model: DecoderLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    prefix: bool = False,
) -> torch.Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Args:
        model: a decoder-only model; it runs in eval mode (its mode is restored afterwards).
        input_ids: (B, T0) prompts of equal length, or (T0,) for one prompt.
        max_new_tokens: tokens to add at most.
        temperature: sampling temperature; ``<= 0`` means greedy.
        top_k: sample among the k most likely tokens (None or 0: all).
        top_p: sample from the smallest set of tokens with cumulative probability >= p.
        eos_id: stop a row at this token; generation ends when every row has stopped, and
            stopped rows are padded with ``eos_id``.
        generator: a seeded ``torch.Generator`` (on the model's device) for reproducibility.
        prefix: the prompt is a prefix-LM prefix: its tokens attend to each other
            bidirectionally (the new tokens attend causally to everything before them).

    Returns:
        Prompt followed by the new tokens: (B, T0 + n) with ``n <= max_new_tokens``, or
        (T0 + n,) for a 1-D prompt.

    Raises:
        ValueError: if the prompt plus new tokens exceed ``max_seq_len`` of a model with
            learned positions, or on an empty prompt.
    """
    input_ids, squeeze = batched_prompts(input_ids, max_new_tokens)
    B, T0 = input_ids.shape
    # The last new token is returned, never fed back: it takes no position.
    positions = T0 + max(max_new_tokens - 1, 0)
    cfg = model.cfg
    if positions > cfg.max_seq_len:
        if model.pos_embed is not None:
            raise ValueError(
                f"prompt ({T0}) + max_new_tokens ({max_new_tokens}) needs {positions} positions, "
                f"more than max_seq_len {cfg.max_seq_len} of a model with learned positions"
            )
        log.warning(
            "generating %d positions past max_seq_len %d (RoPE)", positions, cfg.max_seq_len
        )

    device = model.output_weight.device
    input_ids = input_ids.to(device)
    with inference(model):
        out = _decode(
            model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_id, generator, prefix
        )
    return out[0] if squeeze else out


def batched_prompts(input_ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, bool]:
    """``input_ids`` as (B, T) and whether it was one (T,) prompt; refuses an empty prompt
    and a negative ``max_new_tokens``."""
    squeeze = input_ids.dim() == 1
    if squeeze:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return input_ids, squeeze


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode, without autograd and eager, its mode restored afterwards.

    Blocks compiled for training (train.compile_scope=blocks) would recompile as a cache
    grows; one token at a time is a small graph anyway, so inference runs eager."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            yield
    finally:
        model.train(was_training)


def _decode(
    model: DecoderLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    generator: torch.Generator | None,
    prefix: bool = False,
) -> torch.Tensor:
    B, T0 = input_ids.shape
    if max_new_tokens == 0:
        return input_ids
    cache = model.new_kv_cache(B, T0 + max_new_tokens - 1)  # the last token is not fed
    spec = None
    if prefix:
        lengths = torch.full((B,), T0, dtype=torch.long, device=input_ids.device)
        spec = AttentionSpec(kind="prefix", prefix_lengths=lengths)
    hidden = model.forward_tokens(input_ids, attention=spec, kv_cache=cache)  # fills the cache
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for step in range(max_new_tokens):
        logits = model.logits(hidden[:, -1])  # (B, V)
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done = done | (token == eos_id)
        new_tokens.append(token)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
            break
        hidden = model.forward_tokens(token[:, None], kv_cache=cache)  # (B, 1, d)
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
