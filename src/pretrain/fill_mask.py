"""Fill the ``<|mask|>`` marks of a text with an encoder trained by masked LM (BERT, Devlin et
al. 2019), as Hugging Face's ``fill-mask`` pipeline does: every mark is predicted at once,
from the text around it, and each gets its most likely tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pretrain.generate import inference
from pretrain.models.encoder.model import EncoderLM


@dataclass(frozen=True)
class MaskPrediction:
    """The most likely tokens at one masked position, most likely first."""

    position: int
    token_ids: list[int]
    probabilities: list[float]


def fill_mask(
    model: EncoderLM, input_ids: torch.Tensor, mask_id: int, top_k: int = 5
) -> list[MaskPrediction]:
    """The ``top_k`` most likely tokens at each ``mask_id`` of ``input_ids`` (T,).

    Raises:
        ValueError: when the input holds no mask token, or ``top_k`` is below 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    positions = (input_ids == mask_id).nonzero().flatten()
    if len(positions) == 0:
        raise ValueError("the prompt holds no <|mask|> to fill")
    device = model.output_weight.device
    with inference(model):
        hidden = model.forward_tokens(input_ids[None].to(device))[0]  # (T, d_model)
        probs = model.logits(hidden[positions.to(device)]).softmax(dim=-1)  # (M, V)
        best = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        MaskPrediction(int(p), ids.tolist(), values.tolist())
        for p, ids, values in zip(positions, best.indices.cpu(), best.values.cpu(), strict=True)
    ]


def filled_ids(input_ids: list[int], predictions: list[MaskPrediction]) -> list[int]:
    """``input_ids`` with each predicted position set to its most likely token."""
    out = list(input_ids)
    for prediction in predictions:
        out[prediction.position] = prediction.token_ids[0]
    return out
