"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), finding the one to resume, and rebuilding
the model of a checkpoint (a training run's or an exported sub-network's; the dict layout is ``state.py``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.elastic import ElasticDepth
from ..io import atomic_torch_save
from ..models import create_model
from .config import Config, config_from_dict
from .state import SavedRun, model_weights

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "build_model", "resume_path", "LoadedModel",
           "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint dict atomically (``io.atomic_torch_save``): a kill mid-write leaves the old file intact."""
    return atomic_torch_save(obj, path)


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
    the run's config, the checkpoint dict, the number of classes, the exported depths and ``SavedRun``."""

    model: nn.Module
    ed: ElasticDepth | None
    config: Config
    checkpoint: dict[str, Any]
    num_classes: int
    depths: list | None = None
    saved: SavedRun | None = None


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
    saved = SavedRun.of(ckpt)
    if saved.config is None:
        raise CheckpointError(f"checkpoint {str(path)!r} has no 'config' entry; cannot rebuild the model")
    cfg = config_from_dict(_strip_run_only(saved.config))
    num_classes = int(saved.num_classes or cfg.model.num_classes or 0)
    if num_classes <= 0:
        raise CheckpointError(f"checkpoint {str(path)!r} does not record num_classes")
    model = build_model(cfg, num_classes)
    ed: ElasticDepth | None = ElasticDepth(model, stages=cfg.model.stages)
    if saved.depths is not None:
        model = ed.extract(saved.depths)
        ed = None
    missing, unexpected = model.load_state_dict(model_weights(ckpt, use_ema), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"weights of {str(path)!r} do not fit {cfg.model.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.eval()
    return LoadedModel(model, ed, cfg, ckpt, num_classes, saved.depths, saved)


def _strip_run_only(cfg: dict) -> dict:
    # a finished run's resume setting points at its own files; it is irrelevant (and may not exist) when loading
    cfg = dict(cfg)
    cfg["resume"] = None
    return cfg


def resume_path(cfg: Config) -> Path | None:
    """The checkpoint ``cfg.resume`` points at: ``auto`` -> ``run_dir/last.pt`` when it exists; a run directory
    -> its ``last.pt``; None when there is nothing to resume."""
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = cfg.run_dir / "last.pt"
        return path if path.exists() else None
    path = Path(cfg.resume).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {str(path)!r} does not exist")
    return path
