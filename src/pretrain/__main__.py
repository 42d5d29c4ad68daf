"""``python -m pretrain ...`` and ``torchrun -m pretrain ...``: the ``pretrain`` command."""

from pretrain.cli import run

run()
