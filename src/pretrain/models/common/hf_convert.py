"""Shared machinery of the Hugging Face converters in each family's ``hf.py``.

A family describes its mapping as entries ``(our name, [(HF name, rows)], transpose)``: several
HF tensors may be row blocks of one fused tensor of ours (rows None: the whole tensor), and
``transpose`` marks GPT-2's Conv1D weights, stored (in, out) where ``nn.Linear`` stores
(out, in). The functions here apply such a mapping in either direction and move the tensors
into a model, so a family's ``hf.py`` only says what maps to what and what it refuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

Entry = tuple[str, list[tuple[str, int | None]], bool]


def refuse(options: list[str], target: str) -> None:
    """Raise a ``ValueError`` naming every option that has no exact equivalent in ``target``."""
    if options:
        raise ValueError(f"no exact {target} equivalent for: {'; '.join(options)}")


def to_hf_tensors(
    ours: dict[str, torch.Tensor], entries: Iterable[Entry]
) -> dict[str, torch.Tensor]:
    """Our state dict in HF names: fused tensors split by rows, Conv1D weights transposed."""
    out: dict[str, torch.Tensor] = {}
    for name, targets, transpose in entries:
        t = ours[name].t() if transpose else ours[name]
        rows = [r for _, r in targets]
        parts = t.split(rows) if rows[0] is not None else [t]
        out.update({hf: part for (hf, _), part in zip(targets, parts, strict=True)})
    return out


def from_hf_tensors(
    hf: dict[str, torch.Tensor], entries: Iterable[Entry]
) -> dict[str, torch.Tensor]:
    """An HF state dict in our names: row blocks concatenated, Conv1D weights transposed."""
    out = {}
    for name, sources, transpose in entries:
        t = torch.cat([hf[k] for k, _ in sources]) if len(sources) > 1 else hf[sources[0][0]]
        out[name] = (t.t() if transpose else t).contiguous()
    return out


def load_into_hf(
    hf_model: Any,
    state: dict[str, torch.Tensor],
    like: torch.Tensor,
    may_be_missing: Iterable[str] = (),
) -> Any:
    """Copy ``state`` into ``hf_model`` (moved to ``like``'s dtype and device); eval mode.

    Every HF parameter must be given, except buffers and ``may_be_missing`` (tied aliases); a
    gap or a surplus is a layout drift in transformers, not a user error.
    """
    hf_model.to(device=like.device, dtype=like.dtype)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    allowed = {name for name, _ in hf_model.named_buffers()} | set(may_be_missing)
    missing = [k for k in missing if k not in allowed]
    if missing or unexpected:
        raise RuntimeError(f"HF state dict mismatch: missing {missing}, unexpected {unexpected}")
    return hf_model.eval()


def build_from_state(
    model_cls: type[nn.Module],
    cfg: Any,
    state: dict[str, torch.Tensor],
    like: torch.Tensor,
    dtype: torch.dtype | None,
) -> nn.Module:
    """``model_cls(cfg)`` holding ``state``, on ``like``'s device, in ``dtype`` (None: ``like``'s).

    Built on the meta device: there is no point drawing random weights that are overwritten.
    """
    with torch.device("meta"):
        model = model_cls(cfg)
    model.to_empty(device=like.device)
    model.to(like.dtype if dtype is None else dtype)
    model.load_state_dict(state, strict=True)
    return model
