"""The benchmark scripts' tests (``python -m pytest benchmarks/tests``; CI runs them after the library's suite)."""

import torch

torch.set_num_threads(1)
