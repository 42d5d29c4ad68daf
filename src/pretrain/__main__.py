"""``python -m pretrain ...`` and ``torchrun -m pretrain ...``: the ``pretrain`` command."""

import sys

from pretrain.cli import main

sys.exit(main())
