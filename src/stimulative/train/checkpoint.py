"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), finding the one to resume, and rebuilding
the model of a checkpoint (a training run's or an exported sub-network's; the dict layout is ``state.py``'s, the
model is built by ``model.py``'s ``build_model``).

A run directory stands for its best checkpoint, as ``last.pt`` records it (``run_checkpoint``): ``last.pt``
itself when its epoch is the best (also when a kill stopped the ``best.pt`` write after it), else ``best.pt``,
which must then be the checkpoint ``last.pt`` names.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.elastic import ElasticDepth
from ..io import atomic_torch_save
from .config import Config, config_from_dict
from .model import build_model, elastic
from .state import SavedRun, model_weights

__all__ = ["save_checkpoint", "load_checkpoint", "resume_path", "run_checkpoint", "peek_checkpoint",
           "LoadedModel", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint dict atomically (``io.atomic_torch_save``): a kill mid-write leaves the old file intact."""
    return atomic_torch_save(obj, path)


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    """Our own message for a file ``torch.load(weights_only=True)`` refused (never torch's advice to load it
    unsafely)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        why = "the file is empty"
    elif isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        why = "it holds Python objects that a safe load (weights_only=True) refuses to run"
    elif head.startswith(b"PK"):
        why = "the file is truncated or corrupt (an interrupted write or copy?)"
    else:
        why = "it is not a PyTorch checkpoint file"
    return CheckpointError(f"{str(path)!r} is not a readable stimulative checkpoint: {why}")


def peek_checkpoint(path: str | Path) -> SavedRun | None:
    """What a checkpoint says about its run (epoch, step, best) without reading its tensors (``mmap``); None
    when it cannot be read."""
    try:
        return SavedRun.of(torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True))
    except Exception:  # noqa: BLE001 - any failure: the caller falls back to a full load and its clear error
        return None


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run directory stands for: its best one, as ``last.pt`` records it.

    Raises:
        CheckpointError: no checkpoint, or a ``best.pt`` that is not the one ``last.pt`` names.
    """
    run_dir = Path(run_dir)
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    if not last.is_file():
        if best.is_file():
            return best
        raise CheckpointError(f"no best.pt or last.pt in run directory {str(run_dir)!r}")
    saved = peek_checkpoint(last)
    if saved is None or saved.is_best or not best.is_file():
        return last
    if saved.best is None:   # no best recorded (an older checkpoint format): prefer best.pt as before
        return best
    held = peek_checkpoint(best)
    if held is None or held.position != saved.best:
        found = f"epoch {held.epoch}, step {held.step}" if held is not None else "unreadable"
        raise CheckpointError(f"{str(best)!r} ({found}) is not the best checkpoint that last.pt records (epoch "
                              f"{saved.best['epoch']}, step {saved.best['step']}); give last.pt explicitly")
    return best


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (a ``.pt`` file, or a run directory: ``run_checkpoint``) with
    ``torch.load(weights_only=True)`` and a clear one-line ``CheckpointError`` on failure."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = run_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise _unreadable(path, err) from None
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


def load_model(path: str | Path, use_ema: bool = False, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint (training or exported sub-network) and load its weights.

    Internal: ``stimulative.open_run`` is the public way to open a run (``stimulative.runs._load`` inside the
    package).

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
    ed: ElasticDepth | None = elastic(model, cfg)
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
