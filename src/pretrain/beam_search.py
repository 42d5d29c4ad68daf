"""Beam search: the ``num_beams`` most likely continuations kept at each step.

Each step extends every running beam by every token, keeps the ``2 * num_beams`` best
extensions by summed log-probability, moves those that end (EOS, or the last step) among the
best ``num_beams`` to the finished hypotheses, scored by their sum divided by their length to
the power ``length_penalty``, and runs on with the best ``num_beams`` that did not end. The
search stops when no running beam can beat the worst of ``num_beams`` finished hypotheses
(the bound divides the best running sum by the current length), or at the last step. This is
Hugging Face ``generate(num_beams=k)``'s search with its defaults (``length_penalty=1.0``,
``early_stopping=False``), so the output matches it token for token (tested); the search
itself is the classic one of statistical machine translation (Koehn 2004, "Pharaoh"; for
neural models Sutskever et al. 2014, §3.1).

The model is reached through a step function, so one search serves decoders and
encoder-decoders: ``step(tokens, order)`` reorders the model's cache rows by ``order`` (each
running beam's source row), feeds ``tokens`` (one per row) and returns the next-token logits;
the first call, ``step(None, None)``, runs the prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]

_NEG = -1.0e9  # a score that never wins: an empty slot, or a candidate that may not be taken


def beam_search(
    step: Step,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    eos_id: int | None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """The best finished hypothesis of each of ``batch_size`` inputs: its tokens, the EOS
    that ended it included.

    Args:
        step: see the module docstring; rows are ``batch_size * num_beams``, input-major.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(
            f"num_beams and max_new_tokens must be >= 1, got {num_beams} and {max_new_tokens}"
        )
    B, k, K = batch_size, num_beams, 2 * num_beams
    running = torch.zeros(B, k, max_new_tokens, dtype=torch.long)
    running_scores = torch.full((B, k), _NEG)
    running_scores[:, 0] = 0.0  # the beams start equal: only the first is expanded
    finished = torch.zeros(B, k, max_new_tokens, dtype=torch.long)
    finished_scores = torch.full((B, k), _NEG)
    finished_lengths = torch.zeros(B, k, dtype=torch.long)
    is_finished = torch.zeros(B, k, dtype=torch.bool)
    may_improve = torch.ones(B, dtype=torch.bool)
    rank = torch.arange(K)
    tokens = order = None
    for t in range(max_new_tokens):
        logits = step(tokens, order).float().cpu()  # (B * k, V)
        vocab = logits.shape[-1]
        log_probs = logits.log_softmax(-1).view(B, k, vocab) + running_scores[:, :, None]
        top_scores, top_index = log_probs.view(B, k * vocab).topk(K)  # (B, K), best first
        source, token = top_index // vocab, top_index % vocab
        candidates = running.gather(1, source[:, :, None].expand(B, K, max_new_tokens)).clone()
        candidates[:, :, t] = token
        ends = torch.full((B, K), t + 1 >= max_new_tokens)
        if eos_id is not None:
            ends |= token == eos_id

        # the best k extensions that go on
        going = top_scores + ends.float() * _NEG
        keep = going.topk(k).indices  # (B, k)
        running = candidates.gather(1, keep[:, :, None].expand(B, k, max_new_tokens))
        running_scores = going.gather(1, keep)
        beam_source = source.gather(1, keep)

        # the extensions that end, among the best k, join the finished ones if good enough
        new_scores = top_scores / float(t + 1) ** length_penalty
        joins = ends & (rank < k)[None, :] & may_improve[:, None]
        new_scores = torch.where(joins, new_scores, torch.full_like(new_scores, _NEG))
        scores = torch.cat([finished_scores, new_scores], dim=1)  # (B, k + K)
        best = scores.topk(k).indices
        all_tokens = torch.cat([finished, candidates], dim=1)
        finished = all_tokens.gather(1, best[:, :, None].expand(B, k, max_new_tokens))
        finished_scores = scores.gather(1, best)
        lengths = torch.cat([finished_lengths, torch.full((B, K), t + 1)], dim=1)
        finished_lengths = lengths.gather(1, best)
        is_finished = torch.cat([is_finished, joins], dim=1).gather(1, best)

        # can a running beam still beat the worst finished one? (only once k have finished)
        bound = running_scores[:, 0] / float(t + 1) ** length_penalty
        worst = torch.where(is_finished.all(1), finished_scores.min(1).values, _NEG)
        may_improve &= bound > worst
        if not may_improve.any() or ends.all():
            break
        tokens = running[:, :, t].reshape(B * k)
        order = (beam_source + torch.arange(B)[:, None] * k).reshape(B * k)
    return [finished[b, 0, : int(finished_lengths[b, 0])].tolist() for b in range(B)]


def decoder_beam_search(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    eos_id: int | None,
    prefix: bool = False,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """:func:`beam_search` continuing each of ``input_ids`` (B, T0), prompts of equal length
    (or one prompt (T0,)), with a decoder's KV cache; ``prefix``: the prompt attends to
    itself bidirectionally."""
    from pretrain.generate import batched_prompts, inference
    from pretrain.objectives.base import AttentionSpec

    input_ids, _ = batched_prompts(input_ids, max_new_tokens)
    B, T0 = input_ids.shape
    device = model.output_weight.device
    rows = input_ids.to(device).repeat_interleave(num_beams, dim=0)  # (B * k, T0)
    cache = model.new_kv_cache(B * num_beams, T0 + max_new_tokens - 1)
    spec = None
    if prefix:
        lengths = torch.full((B * num_beams,), T0, dtype=torch.long, device=device)
        spec = AttentionSpec(kind="prefix", prefix_lengths=lengths)

    def step(tokens: torch.Tensor | None, order: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            hidden = model.forward_tokens(rows, attention=spec, kv_cache=cache)
        else:
            cache.reorder(order.to(device))
            hidden = model.forward_tokens(tokens.to(device)[:, None], kv_cache=cache)
        return model.logits(hidden[:, -1])

    with inference(model):
        return beam_search(step, B, num_beams, max_new_tokens, eos_id, length_penalty)


def encoder_decoder_beam_search(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    eos_id: int | None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """:func:`beam_search` of the decoder's output for each encoder input of ``input_ids``
    (B, T), right-padded with the model's ``pad_id`` (or one input (T,)); the encoder runs
    once per input."""
    from pretrain.generate import batched_prompts, inference

    input_ids, _ = batched_prompts(input_ids, max_new_tokens)
    B = input_ids.shape[0]
    device = model.output_weight.device
    input_ids = input_ids.to(device)
    cache = model.new_decoder_cache()

    def step(tokens: torch.Tensor | None, order: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            tokens = torch.full((B * num_beams,), model.cfg.decoder_start_id, device=device)
        else:
            cache.reorder(order.to(device))
        hidden = model.decode(tokens.to(device)[:, None], memory, encoder_mask, cache)
        return model.logits(hidden[:, -1])

    with inference(model):
        memory = model.encode(input_ids).repeat_interleave(num_beams, dim=0)
        encoder_mask = (input_ids != model.cfg.pad_id).repeat_interleave(num_beams, dim=0)
        return beam_search(step, B, num_beams, max_new_tokens, eos_id, length_penalty)
