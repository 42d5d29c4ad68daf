"""Named sizes: a family's table of shapes, with any config field overridden (free shapes)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def sized_config(
    config_cls: type[T],
    sizes: dict[str, dict[str, Any]],
    family: str,
    size: str,
    vocab_size: int,
    overrides: dict[str, Any],
) -> T:
    """``config_cls`` of the named ``size`` for ``vocab_size`` tokens, with ``overrides``.

    Raises:
        ValueError: for an unknown size (listing the valid ones) or an unknown field (listing
            the fields); the config itself names any invalid value.
    """
    if size not in sizes:
        raise ValueError(f"unknown {family} size {size!r}; valid: {', '.join(sizes)}")
    fields = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown {config_cls.__name__} field(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    return config_cls(vocab_size=vocab_size, **{**sizes[size], **overrides})
