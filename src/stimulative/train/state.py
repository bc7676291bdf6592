"""The checkpoint layout, in one place: what a training run saves and restores, and what an export holds.

A training checkpoint (``last.pt``, ``best.pt``) is a dict::

    {"format": "stimulative-v1", "model": state_dict, "ema": state_dict | None, "ema_n_averaged": int,
     "config": config dict, "num_classes": int, "epoch": completed epochs, "step": optimizer steps,
     "optimizer": ..., "scheduler": ..., "scaler": ... | None, "rng": {torch, cuda, python, numpy},
     "space_rng": sampler state, "step_rng": input-size generator state, "metrics": last epoch's record,
     "history": all epoch records, "best_acc": float, "best": {"epoch", "step"} of best.pt | None,
     "steps_per_epoch": int, "data_fingerprint": {"kind", "files", "bytes"} | None,
     "starts": [{"started", "stimulative", "torch", "python", "git_commit", "git_dirty"}, ...]}

``data_fingerprint`` identifies the training data (``stimulative.data.data_fingerprint``: file count and bytes,
no contents) so that a resume on other data is refused; checkpoints written before it have none and resume as
before. ``starts`` has one ``stimulative.provenance.run_start()`` per start of the run (fresh, then each
resume): the library's versions and git commit, so that the code behind a run's numbers can be named.

``last.pt`` is written first, then ``best.pt`` (when the epoch is the best): ``best`` in ``last.pt`` names the
checkpoint that ``best.pt`` must be, so a kill between the two writes is detected (``best`` is then ``last.pt``
itself) and repaired on resume.

An exported sub-network has ``format``, ``model`` (the state_dict of the architecture with the skipped blocks
removed), ``config``, ``num_classes``, ``depths`` (the config it was cut at), ``ema: None`` and the export's own
entries (metrics, normalisation, ...). Every other module reads checkpoints through ``SavedRun``/``model_weights``
and writes them through ``TrainingState`` and ``exported_checkpoint``.

Reproducibility: the global RNGs are re-seeded from (seed, epoch, rank) at every epoch start, so only a
checkpoint taken in the middle of an epoch (``max_steps``) needs the saved RNG state to resume exactly. The LR
schedule is not restored but rebuilt from the config at the saved step (``optim.start_schedule_at``), and the
optimizer's hyper-parameters are the config's: what ``train.resume`` lets a resumed run change takes effect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..core.step import StimulativeStep
from ..data import data_fingerprint
from ..provenance import run_start
from .config import upgrade_renamed_keys
from .optim import start_schedule_at

__all__ = ["FORMAT", "TrainingState", "model_weights", "exported_checkpoint"]  # SavedRun: internal (open_run)

FORMAT = "stimulative-v1"
_RESUMABLE = ("optimizer", "epoch", "step", "rng", "space_rng", "step_rng")
# a language-model checkpoint of the release before LM runs used this state: torch_rng/cuda_rng, no epoch
_RESUMABLE_LM_V1 = ("optimizer", "step", "torch_rng", "space_rng", "step_rng")


@dataclass
class TrainingState:
    """Everything a training run carries from one step to the next, and its checkpoint dict.

    ``epoch`` counts completed epochs, ``global_step`` optimizer steps; ``history`` holds one record per
    completed epoch; ``best`` is the (epoch, step) of the best epoch so far (what ``best.pt`` holds).
    ``step.space`` is the sub-network sampler.

    A run counted in steps (``by_step``: language models, whose batches depend on (seed, step) only and whose
    global RNGs are not re-seeded per epoch) restores the RNG states at every resume and may stop anywhere;
    ``history`` then holds one record per validation. ``fingerprint`` is the training data's identity when the
    run computes it itself (else it is derived from the config's ``data.name``/``data.root``).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: StimulativeStep
    ema: AveragedModel | None = None
    scaler: torch.amp.GradScaler | None = None
    steps_per_epoch: int = 0
    epoch: int = 0
    global_step: int = 0
    best_acc: float = -1.0
    best: dict[str, int] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=lambda: [run_start()])  # this start; restore prepends
    by_step: bool = False
    fingerprint: dict[str, Any] | None = None

    def checkpoint(self, config: dict, num_classes: int, record: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """The training checkpoint dict now (``record``: the last epoch's, possibly partial)."""
        ema = self.ema
        return {
            "format": FORMAT, "model": self.model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
            "config": config, "num_classes": num_classes, "epoch": self.epoch, "step": self.global_step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(device), "space_rng": self.step.space.rng.getstate(), "step_rng": self.step.rng.getstate(),
            "metrics": record, "history": self.history, "best_acc": self.best_acc, "best": self.best,
            "steps_per_epoch": self.steps_per_epoch,
            "data_fingerprint": self.fingerprint if self.fingerprint is not None else _fingerprint(config),
            "starts": self.starts,
        }

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> bool:
        """Count epoch ``epoch`` (0-based) as done unless ``record`` is partial, keep its record, track the best
        full-network test accuracy; returns whether this epoch is the best so far."""
        partial = record.get("partial", False)
        self.epoch = epoch + (0 if partial else 1)
        if not partial:
            self.history.append(record)
        is_best = record.get("test_acc") is not None and record["test_acc"] > self.best_acc
        if is_best:
            self.best_acc = record["test_acc"]
            self.best = {"epoch": self.epoch, "step": self.global_step}
        return is_best

    def restore(self, ckpt: dict[str, Any], device: torch.device, source: str | Path) -> int:
        """Load a training checkpoint into the live objects; returns the batches of the epoch already done.

        The optimizer keeps its moments but takes its hyper-parameters (lr, momentum, weight decay, betas) from
        the config it was built with, and the LR schedule restarts at the saved step (``start_schedule_at``).

        Raises:
            ValueError: the checkpoint's steps per epoch differ from ``steps_per_epoch`` (data or batch size
                changed).
        """
        steps_per_epoch = self.steps_per_epoch
        saved_steps = ckpt.get("steps_per_epoch")
        if saved_steps and int(saved_steps) != steps_per_epoch:
            raise ValueError(f"cannot resume {str(source)!r}: it was trained with {saved_steps} steps per epoch, "
                             f"the data now gives {steps_per_epoch} (did the data or the number of processes "
                             "change?)")
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, values in zip(self.optimizer.param_groups, configured):
            group.update(values)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 1)))
        self.step.space.rng.setstate(_as_tuple(ckpt["space_rng"]))
        self.step.rng.setstate(_as_tuple(ckpt["step_rng"]))
        self.epoch, self.global_step = int(ckpt.get("epoch", 0)), int(ckpt["step"])
        self.step.calls = self.global_step  # one call per optimizer step: keeps subnet_every / stats_every in phase
        self.best_acc, self.history = float(ckpt.get("best_acc", -1.0)), list(ckpt.get("history", []))
        self.best = ckpt.get("best")
        self.starts = [*ckpt.get("starts", []), *self.starts[-1:]]
        start_schedule_at(self.scheduler, self.global_step)
        if self.by_step:
            rng = ckpt.get("rng") or {"torch": ckpt["torch_rng"], "cuda": ckpt.get("cuda_rng")}
            _set_rng_state(rng, device)
            return 0
        skip = self.global_step - self.epoch * steps_per_epoch
        if not 0 <= skip < steps_per_epoch:
            raise ValueError(f"cannot resume {str(source)!r}: it stopped at step {self.global_step} of epoch "
                             f"{self.epoch + 1}, which does not fit {steps_per_epoch} steps per epoch (did the "
                             "data or batch size change?)")
        if skip:
            _set_rng_state(ckpt["rng"], device)
        return skip


@dataclass
class SavedRun:
    """What a checkpoint says about its run, for loading and reporting (``SavedRun.of(ckpt)``)."""

    config: dict | None
    num_classes: int | None
    depths: list | None
    has_ema: bool
    epoch: int | None
    step: int | None
    best_acc: float | None
    history: list[dict[str, Any]]
    best: dict[str, int] | None = None   # (epoch, step) that best.pt holds; None: no best yet, or an older format
    resumable: bool = False              # a training checkpoint (optimizer, step, RNGs), not an exported network
    data_fingerprint: dict[str, Any] | None = None   # the training data's identity; None: generated data, or older
    starts: list[dict[str, Any]] = field(default_factory=list)  # one per start of the run (provenance); [] if older

    @classmethod
    def of(cls, ckpt: dict[str, Any]) -> SavedRun:
        history = list(ckpt.get("history") or ([ckpt["metrics"]] if ckpt.get("metrics") else []))
        num_classes = ckpt.get("num_classes")
        config = upgrade_renamed_keys(ckpt["config"]) if ckpt.get("config") is not None else None
        return cls(config, int(num_classes) if num_classes else None, ckpt.get("depths"),
                   ckpt.get("ema") is not None, ckpt.get("epoch"), ckpt.get("step"), ckpt.get("best_acc"), history,
                   ckpt.get("best"), all(k in ckpt for k in _RESUMABLE) or all(k in ckpt for k in _RESUMABLE_LM_V1),
                   ckpt.get("data_fingerprint"),
                   list(ckpt.get("starts") or []))

    @property
    def position(self) -> dict[str, int | None]:
        """Where in training this checkpoint was taken: ``{"epoch", "step"}`` (compare with ``best``)."""
        return {"epoch": self.epoch, "step": self.step}

    @property
    def is_best(self) -> bool:
        """This checkpoint is the run's best one (``best.pt`` must equal it)."""
        return self.best is not None and self.best == self.position


def model_weights(ckpt: dict[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's state_dict in a checkpoint (the EMA weights when asked and present)."""
    return ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]


def exported_checkpoint(model: nn.Module, config: dict, num_classes: int, depths: list[int],
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of an exported sub-network (loads with ``load_model``; ``extra``: metrics etc.)."""
    return {"format": FORMAT, "model": model.state_dict(), "config": config, "num_classes": num_classes,
            "depths": depths, "ema": None, **{k: v for k, v in (extra or {}).items() if k != "depths"}}


def _fingerprint(config: dict) -> dict[str, Any] | None:
    """The training data's fingerprint for the run's config dict (remembered since the run checked it)."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not data.get("name") or data.get("root") is None:
        return None
    return data_fingerprint(str(data["name"]), str(data["root"]))


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("python") is not None:
        random.setstate(_as_tuple(state["python"]))
    if state.get("numpy") is not None:
        n = state["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
