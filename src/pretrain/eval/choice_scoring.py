"""The log-likelihood a model gives a continuation after a context: how multiple-choice
answers are scored (Brown et al. 2020, §2.4; lm-evaluation-harness's ``loglikelihood``).

``log p(continuation | context) = sum_i log p(c_i | context, c_<i)``, read from one forward
pass over ``context + continuation``. Requests run in batches, right-padded: a decoder reads
causally (or a prefix bidirectionally, each row its own length), and an encoder-decoder's
decoder causally, so padding after a row's tokens changes none of its scores; an
encoder-decoder's padded encoder positions are masked as keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from pretrain.generate import inference
from pretrain.models.decoder.model import DecoderLM
from pretrain.models.encoder_decoder.model import EncoderDecoderLM
from pretrain.objectives.base import AttentionSpec


def decoder_log_likelihoods(
    model: DecoderLM,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    prefix: bool = False,
    batch_size: int = 16,
) -> list[float]:
    """``log p(continuation | context)`` for each (context ids, continuation ids).

    The last token of a continuation is predicted, never read, so a request's row is
    ``context + continuation[:-1]``, and requests with the same row share one: all the
    one-token answers to one prompt are scored from a single row (a forward for the prompt,
    not one per answer).

    Args:
        prefix: the context attends to itself bidirectionally (a prefix LM's prompt).
    """
    rows: dict[tuple[tuple[int, ...], int], list[int]] = {}  # (row, context length): requests
    for i, (context, continuation) in enumerate(requests):
        if len(context) == 0 or len(continuation) == 0:
            raise ValueError("a request needs a context and a continuation of a token or more")
        key = (tuple(context) + tuple(continuation[:-1]), len(context))
        rows.setdefault(key, []).append(i)
    scores = [0.0] * len(requests)
    device = model.output_weight.device
    keys = list(rows)
    with inference(model):
        for start in range(0, len(keys), batch_size):
            batch = keys[start : start + batch_size]
            input_ids = _right_padded([ids for ids, _ in batch], 0, device)
            spec = None
            if prefix:
                lengths = torch.tensor([n for _, n in batch], device=device)
                spec = AttentionSpec(kind="prefix", prefix_lengths=lengths)
            hidden = model.forward_tokens(input_ids, attention=spec)  # (B, T, d)
            for row, key in enumerate(batch):
                for i in rows[key]:
                    context, continuation = requests[i]
                    # position t predicts token t + 1: the continuation from the context's last
                    scores[i] = _log_prob(model, hidden[row], len(context) - 1, continuation)
    return scores


def encoder_decoder_log_likelihoods(
    model: EncoderDecoderLM,
    requests: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    batch_size: int = 16,
) -> list[float]:
    """``log p(continuation | encoder input, decoder prefix)`` for each (encoder input ids,
    decoder prefix ids, continuation ids): the decoder is teacher-forced through the prefix
    (a sentinel, or BART's copy of the input), and only the continuation is scored.

    As for decoders, requests whose decoder rows (``[start] + prefix + continuation[:-1]``)
    and encoder inputs are equal share a row, and each encoder input of a batch is encoded
    once, however many answers to it the batch scores."""
    rows: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for i, (encoder_input, decoder_prefix, continuation) in enumerate(requests):
        if len(encoder_input) == 0 or len(continuation) == 0:
            raise ValueError("a request needs an encoder input and a continuation")
        decoder_row = (model.cfg.decoder_start_id, *decoder_prefix, *continuation[:-1])
        rows.setdefault((tuple(encoder_input), decoder_row), []).append(i)
    scores = [0.0] * len(requests)
    device = model.output_weight.device
    keys = list(rows)
    with inference(model):
        for start in range(0, len(keys), batch_size):
            batch = keys[start : start + batch_size]
            inputs = list(dict.fromkeys(encoder_input for encoder_input, _ in batch))
            encoder_ids = _right_padded(inputs, model.cfg.pad_id, device)
            memory = model.encode(encoder_ids)  # (distinct inputs, T_enc, d)
            which = torch.tensor([inputs.index(e) for e, _ in batch], device=device)
            keys_mask = (encoder_ids != model.cfg.pad_id)[which]
            decoder_ids = _right_padded([row for _, row in batch], 0, device)
            hidden = model.decode(decoder_ids, memory[which], keys_mask)
            for row, key in enumerate(batch):
                for i in rows[key]:
                    _, decoder_prefix, continuation = requests[i]
                    scores[i] = _log_prob(model, hidden[row], len(decoder_prefix), continuation)
    return scores


def _right_padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> torch.Tensor:
    tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
    return pad_sequence(tensors, batch_first=True, padding_value=pad).to(device)


def _log_prob(
    model: torch.nn.Module, hidden: torch.Tensor, first: int, continuation: Sequence[int]
) -> float:
    """``sum log p(continuation)`` read from one row's hidden states (T, d), the first token
    predicted at position ``first``."""
    logits = model.logits(hidden[first : first + len(continuation)]).float()  # (n, V)
    target = torch.tensor(list(continuation), dtype=torch.long, device=logits.device)
    return float(F.log_softmax(logits, dim=-1).gather(-1, target[:, None]).sum())
