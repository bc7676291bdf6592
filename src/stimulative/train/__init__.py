"""Training: the run configuration, where it runs, its state and checkpoints, the loop, and what it reports.

* ``config``: ``Config`` and its sections, YAML recipes and ``key=value`` overrides (``load_config``).
* ``runtime``: the device (``resolve_device``), DDP, autocast.
* ``optim``: optimizer and LR schedule (one builder of each, for image and language-model runs).
* ``state``: ``TrainingState`` and the checkpoint layout (the only module that knows it).
* ``checkpoint``: checkpoint files: atomic save, safe load (a trained run opens with ``stimulative.open_run``).
* ``resume``: what a resumed run may change (free, applied and refused keys).
* ``rundir``: the run directory: writable check, lock, fresh vs existing run, leftovers of interrupted writes.
* ``loop``: ``train_one_epoch`` and ``evaluate_epoch``.
* ``steps``: ``train_steps``, the loop of a run counted in steps (the language-model task, ``stimulative.lm.train``).
* ``log``: metrics files, console lines, training curves.
* ``engine``: ``train(cfg)``, the wiring.

The package is itself callable as ``train(cfg)``, so ``import stimulative as st; st.train(cfg)`` trains a run
while the modules above stay where they are. ``stimulative.train.load_model`` (and ``LoadedModel``) are read with a
DeprecationWarning until the next release: ``stimulative.open_run`` opens a trained run.
"""

import sys
import types
import warnings
from typing import Any

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, DataConfig, ModelConfig, OptimConfig, STConfig, load_config

__all__ = [
    "CheckpointError", "Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "STConfig",
    "load_checkpoint", "load_config", "save_checkpoint", "train",
]

_DEPRECATED = ("load_model", "LoadedModel")  # version 0.1.0's public names; stimulative.open_run replaces them
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    # ``train`` brings the data pipeline (torchvision); ``import stimulative`` (which reads ``train.config``) does
    # not pay for it until a run is trained
    if name == "train":
        from .engine import train

        return train
    if name in _DEPRECATED:
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(f"stimulative.train.{name} is deprecated: open a trained run with stimulative.open_run(path) "
                          "(run.model, run.ed, run.config); the old name is read until the next release",
                          DeprecationWarning, stacklevel=2)
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableTrainPackage(types.ModuleType):
    """``stimulative.train(cfg, ...)`` is ``stimulative.train.engine.train(cfg, ...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .engine import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableTrainPackage
