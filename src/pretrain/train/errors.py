"""The errors that end a run which cannot go on, in a module free of torch: the ``pretrain``
entry point names them for every command, the data commands included, which never import
torch."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the run directory is not in a usable state)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


class BatchWorkerError(RuntimeError):
    """The worker process raised an error; the message says which (and where, for bad data)."""
