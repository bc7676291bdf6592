"""stimulative: Stimulative Training (ST) and ST++ for residual networks.

Paper: "Stimulative Training++: Go Beyond The Performance Limits of Residual Networks", https://arxiv.org/abs/2305.02507

The package is layered (docs/architecture.md): ``core`` (the method) <- ``models``, ``data`` <- ``train`` <-
``runs`` <- ``analysis``, ``deploy`` <- ``commands``/``cli``. This module re-exports the public API.
"""

from ._version import __version__
from .core import losses
from .core.bn import frozen_bn_stats, recalibrate_bn
from .core.elastic import BRANCH, RUN, SKIP, ElasticDepth, find_stages, parse_depths
from .core.evaluation import evaluate, evaluate_depth
from .core.losses import kl_loss, normalize_logits, subnet_loss
from .core.sampling import SampleSpace
from .core.step import NonFiniteLossError, StimulativeStep, stimulative_step
from .models import create_model, list_models, register_model
from .train.config import Config, STConfig, load_config

__all__ = [
    "BRANCH", "RUN", "SKIP", "Config", "ElasticDepth", "NonFiniteLossError", "STConfig", "SampleSpace",
    "StimulativeStep", "create_model", "evaluate", "evaluate_depth", "find_stages", "frozen_bn_stats", "kl_loss",
    "list_models", "load_config", "losses", "normalize_logits", "parse_depths", "recalibrate_bn", "register_model",
    "stimulative_step", "subnet_loss", "__version__",
]
