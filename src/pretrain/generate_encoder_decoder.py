"""Generation with an encoder-decoder model (T5): encode the input once, then decode one
token at a time, with the decoder's keys and values cached.

As in T5 (Raffel et al. 2020) and Hugging Face's ``generate``, decoding starts from the
model's ``decoder_start_id`` (the pad id by default) and stops a row at EOS. A model trained
with span corruption answers an input holding sentinels with each sentinel followed by the
span it stands for (``<|extra_id_0|> span0 <|extra_id_1|> span1 ... EOS``); :func:`fill_spans`
puts those spans back in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pretrain.generate import batched_prompts, inference, sample_next
from pretrain.models.encoder_decoder.model import EncoderDecoderLM


def generate_encoder_decoder(
    model: EncoderDecoderLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The decoder's output for each encoder input: up to ``max_new_tokens`` tokens.

    Args:
        model: an encoder-decoder model; it runs in eval mode (its mode is restored after).
        input_ids: (B, T) encoder inputs, right-padded with the model's ``pad_id`` (masked as
            keys), or (T,) for one input.
        max_new_tokens: tokens to generate at most.
        temperature, top_k, top_p, generator: as for
            :func:`~pretrain.generate.generate` (``temperature <= 0``: greedy).
        eos_id: stop a row at this token (kept in the output); generation ends when every
            row has stopped, and stopped rows are padded with ``eos_id``.

    Returns:
        (B, n) generated tokens, the decoder start token not included, ``n <= max_new_tokens``;
        (n,) for a 1-D input.
    """
    input_ids, squeeze = batched_prompts(input_ids, max_new_tokens)
    input_ids = input_ids.to(model.output_weight.device)
    with inference(model):
        out = _decode(
            model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_id, generator
        )
    return out[0] if squeeze else out


def _decode(
    model: EncoderDecoderLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    B = input_ids.shape[0]
    if max_new_tokens == 0:
        return input_ids.new_zeros((B, 0))
    encoder_mask = input_ids != model.cfg.pad_id  # (B, T): the keys to cross-attend to
    memory = model.encode(input_ids)  # (B, T, d_model)
    cache = model.new_decoder_cache()
    token = torch.full((B,), model.cfg.decoder_start_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for _ in range(max_new_tokens):
        hidden = model.decode(token[:, None], memory, encoder_mask, cache)  # (B, 1, d_model)
        token = sample_next(model.logits(hidden[:, -1]), temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done = done | (token == eos_id)
        new_tokens.append(token)
        if eos_id is not None and bool(done.all()):
            break
    return torch.stack(new_tokens, dim=1)


def fill_spans(
    input_ids: Sequence[int], output_ids: Sequence[int], sentinels: Sequence[int]
) -> list[int]:
    """The input with each sentinel replaced by the span the output gives for it.

    The output reads ``s_0 span_0 s_1 span_1 ...`` (the span-corruption target); a span runs
    to the next sentinel of the output or to its end. A sentinel the output gives no span for
    stays in place, so what the model left out is still visible.
    """
    where = {token: i for i, token in enumerate(sentinels)}
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in output_ids:
        if token in where:
            current = spans.setdefault(token, [])
        elif current is not None:
            current.append(token)
    filled: list[int] = []
    for token in input_ids:
        filled.extend(spans.get(token, [token]) if token in where else [token])
    return filled
