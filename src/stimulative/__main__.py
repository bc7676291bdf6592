"""``python -m stimulative ...`` (also what ``torchrun -m stimulative train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
