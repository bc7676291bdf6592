"""stimulative: Stimulative Training (ST) and ST++ for residual networks.

Paper: "Stimulative Training++: Go Beyond The Performance Limits of Residual Networks", https://arxiv.org/abs/2305.02507

``import stimulative as st`` gives what a user of the method needs: the training step (``StimulativeStep``,
``stimulative_step``, ``StepOptions``), elastic depth (``ElasticDepth``, ``parse_depths``, ``format_depths``),
sub-network sampling (``SampleSpace``), the losses, BatchNorm helpers and evaluation, the model registry
(``create_model``), recipes and training (``load_config``, ``train``), opening a trained run (``open_run``) and
exporting a sub-network (``extract_subnetwork``, ``export_run``). Everything else is imported from its module
(``stimulative.core.elastic.RUN``, ``stimulative.core.elastic.find_stages``, ``stimulative.core.losses``...).

The package is layered (docs/architecture.md): ``core`` (the method) <- ``models``, ``hf``, ``data`` <- ``train`` <-
``lm`` <- ``runs`` <- ``analysis``, ``deploy`` <- this facade <- ``integrations`` <- ``commands``/``cli``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from . import train
from ._version import __version__
from .core.bn import frozen_bn_stats, recalibrate_bn
from .core.elastic import ElasticDepth, format_depths, parse_depths
from .core.evaluation import evaluate, evaluate_depth
from .core.losses import kl_loss, normalize_logits, subnet_loss
from .core.sampling import SampleSpace
from .core.step import NonFiniteLossError, StepOptions, StimulativeStep, stimulative_step
from .models import create_model, list_models, register_model
from .train.config import Config, STConfig, load_config

if TYPE_CHECKING:
    from .deploy.export import export_run, extract_subnetwork
    from .runs import Run, open_run

__all__: list[str] = [
    "__version__",
    # the method
    "StimulativeStep", "stimulative_step", "StepOptions", "NonFiniteLossError", "ElasticDepth", "parse_depths",
    "format_depths", "SampleSpace", "kl_loss", "normalize_logits", "subnet_loss", "frozen_bn_stats",
    "recalibrate_bn", "evaluate", "evaluate_depth",
    # models, recipes, training
    "create_model", "list_models", "register_model", "Config", "STConfig", "load_config", "train",
    # trained runs and deployment
    "open_run", "Run", "extract_subnetwork", "export_run",
]

# Imported on first use: they bring the data pipeline and the exporters, which ``import stimulative`` does not
# pay for.
_LAZY = {"open_run": "stimulative.runs", "Run": "stimulative.runs", "extract_subnetwork": "stimulative.deploy.export",
         "export_run": "stimulative.deploy.export"}
# Names of version 0.1.0's top-level API that are internals: imported from their module, read here with a
# DeprecationWarning until the next release.
_MOVED = {"BRANCH": "stimulative.core.elastic", "RUN": "stimulative.core.elastic", "SKIP": "stimulative.core.elastic",
          "find_stages": "stimulative.core.elastic", "losses": "stimulative.core"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        warnings.warn(f"stimulative.{name} is now imported from {_MOVED[name]} (from {_MOVED[name]} import {name}); "
                      "the top-level name is read until the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
