"""Validation shared by the model config dataclasses: every error names the field.

Each family's config calls these from ``__post_init__``, so a bad value from a YAML file or a
``--model.key=value`` override is refused when the config is built, with the field's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

# Attention kernels every family offers (``models/common/flex.py`` for ``flex``).
ATTENTION_BACKENDS = ("sdpa", "flex", "auto")


def check_choices(cfg: Any, choices: dict[str, Iterable[str]]) -> None:
    """Each ``field`` of ``choices`` holds one of its valid values."""
    for name, valid in choices.items():
        valid = tuple(valid)
        if getattr(cfg, name) not in valid:
            raise ValueError(f"{name}: unknown {getattr(cfg, name)!r}; valid: {', '.join(valid)}")


def check_positive_ints(cfg: Any, *names: str) -> None:
    """Each field is an ``int`` (not a bool) above zero."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_positive_numbers(cfg: Any, *names: str) -> None:
    """Each field is a real number (not a bool) above zero."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def check_heads(d_model: int, n_heads: int) -> None:
    """``d_model`` splits evenly into ``n_heads`` heads."""
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")


class ShapeMixin:
    """``head_dim`` and ``to_dict`` for a dataclass config with ``d_model`` and ``n_heads``."""

    d_model: int
    n_heads: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
