"""The error that ends a run which cannot go on."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the run directory is not in a usable state)."""
