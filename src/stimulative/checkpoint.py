"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and rebuilding a model from one.

A training checkpoint (written by the engine) is a dict::

    {"format": "stimulative-v1", "model": state_dict, "ema": state_dict | None, "config": config dict,
     "num_classes": int, "epoch": completed epochs, "step": optimizer steps, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "rng": ..., "metrics": {...}, "best_acc": float}

An exported sub-network additionally has ``"depths"`` (the depth config it was cut at); its ``model`` state_dict
belongs to the architecture with the skipped blocks removed. ``load_model`` handles both.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, config_from_dict
from .core.elastic import ElasticDepth
from .models import create_model

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "build_model", "LoadedModel", "CheckpointError", "FORMAT"]

FORMAT = "stimulative-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: a temp file in the same directory, fsync, then rename.

    A crash (or kill -9) mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)`` and a clear error on failure."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"no best.pt or last.pt in run directory {str(path)!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {str(err).splitlines()[0]}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{str(path)!r} is not a stimulative checkpoint (no 'model' entry)")
    return obj


@dataclass
class LoadedModel:
    """What ``load_model`` returns: the model (eval mode), its ElasticDepth (None for an exported sub-network),
    the run's config, the checkpoint dict and the number of classes."""

    model: nn.Module
    ed: ElasticDepth | None
    config: Config
    checkpoint: dict[str, Any]
    num_classes: int
    depths: list | None = None


def build_model(cfg: Config, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The model described by ``cfg.model`` (no checkpoint weights; ``pretrained`` loads the library's own)."""
    kwargs = dict(cfg.model.kwargs)
    return create_model(cfg.model.name, num_classes=num_classes, pretrained=pretrained, **kwargs)


def load_model(path: str | Path, use_ema: bool = False, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint (training or exported sub-network) and load its weights.

    Args:
        path: a ``.pt`` file or a run directory (``best.pt`` preferred, then ``last.pt``).
        use_ema: load the EMA weights when the checkpoint has them.
    """
    ckpt = load_checkpoint(path, map_location)
    if "config" not in ckpt:
        raise CheckpointError(f"checkpoint {str(path)!r} has no 'config' entry; cannot rebuild the model")
    cfg = config_from_dict(_strip_run_only(ckpt["config"]))
    num_classes = int(ckpt.get("num_classes") or cfg.model.num_classes or 0)
    if num_classes <= 0:
        raise CheckpointError(f"checkpoint {str(path)!r} does not record num_classes")
    model = build_model(cfg, num_classes)
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    depths = ckpt.get("depths")
    ed: ElasticDepth | None = ElasticDepth(model, stages=cfg.model.stages)
    if depths is not None:
        model = ed.extract(depths)
        ed = None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"weights of {str(path)!r} do not fit {cfg.model.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.eval()
    return LoadedModel(model, ed, cfg, ckpt, num_classes, depths)


def _strip_run_only(cfg: dict) -> dict:
    # a finished run's resume setting points at its own files; it is irrelevant (and may not exist) when loading
    cfg = dict(cfg)
    cfg["resume"] = None
    return cfg
