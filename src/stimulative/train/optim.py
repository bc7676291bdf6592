"""Optimizer and per-iteration learning-rate schedule from ``cfg.optim``: one builder of each for every run
(image runs: ``build_optimizer(model, cfg)``, ``build_scheduler(optimizer, cfg, steps_per_epoch)``; language-model
runs: ``build_optimizer(model, cfg, params=matrix_decay_groups(...))`` and ``step_scheduler(optimizer, cfg.optim,
total_steps, warmup_steps)``). Every schedule is a closed-form function of the iteration, so a resumed run
rebuilds it and starts it at its step (``start_schedule_at``)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from .config import Config

__all__ = ["build_optimizer", "build_scheduler", "step_scheduler", "matrix_decay_groups", "lr_factor",
           "start_schedule_at"]


def matrix_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with weight decay on the matrices (and embeddings) only: ``[{decay: ndim >= 2},
    {no decay: norms, biases}]``, the grouping of language-model runs."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: Any, params: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from ``cfg.optim`` (a ``Config``'s or an ``LMConfig``'s).

    With ``no_decay_bn_bias`` BatchNorm/LayerNorm weights, biases, other 1-d parameters and the model's own
    ``no_weight_decay()`` names (timm ViT: pos_embed, cls_token) get no weight decay (timm's grouping helper);
    ``params`` gives the groups instead (``matrix_decay_groups`` for language models). Nesterov only where the
    section has ``nesterov``.

    Example:
        >>> from stimulative import Config
        >>> import stimulative as st
        >>> opt = build_optimizer(st.create_model("cifar_resnet_tiny", 10), Config())
        >>> [g["weight_decay"] for g in opt.param_groups]
        [0.0, 0.0005]
    """
    o = cfg.optim
    if params is None and o.no_decay_bn_bias:
        from timm.optim import param_groups_weight_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        params = param_groups_weight_decay(model, o.weight_decay, no_weight_decay_list=skip)
    elif params is None:
        params = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": o.weight_decay}]
    if o.name == "sgd":
        nesterov = bool(getattr(o, "nesterov", False)) and o.momentum > 0
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=nesterov)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas))
    raise ValueError(f"optim.name must be sgd or adamw, got {o.name!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at iteration ``step``: linear warmup, then cosine to ``min_ratio`` or constant.

    Example:
        >>> lr_factor(0, 100, 10, "cosine", 0.0), lr_factor(10, 100, 10, "cosine", 0.0), lr_factor(100, 100, 10, "cosine", 0.0)
        (0.1, 1.0, 0.0)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Per-iteration LR schedule of an epoch-based run: "cosine" (linear warmup over ``warmup_epochs``, cosine to
    ``min_lr``), "onecycle" (``torch.optim.lr_scheduler.OneCycleLR``, warm-up fraction ``warmup_epochs/epochs`` or
    0.3) or "constant" (after the warmup). Call ``scheduler.step()`` after every optimizer step."""
    o = cfg.optim
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    pct = o.warmup_epochs / cfg.epochs if o.warmup_epochs > 0 else 0.3
    return _schedule(optimizer, o, total, warmup, pct)


def step_scheduler(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int, warmup_steps: int):
    """The same schedules for a run counted in steps (language models): ``warmup_steps`` (at most
    ``total_steps``) of linear warmup, then cosine to ``optim.min_lr`` or constant; one-cycle's warm-up fraction
    ``warmup_steps / total_steps`` (0.3 without)."""
    pct = warmup_steps / total_steps if warmup_steps else 0.3
    return _schedule(optimizer, optim, total_steps, min(warmup_steps, total_steps), pct)


def _schedule(optimizer: torch.optim.Optimizer, o: Any, total: int, warmup: int, onecycle_pct: float):
    if o.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=total,
                                                   pct_start=min(max(onecycle_pct, 1e-3), 0.99))
    if o.schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule must be cosine, onecycle or constant, got {o.schedule!r}")
    min_ratio = o.min_lr / o.lr if o.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, total, warmup, o.schedule, min_ratio))


def start_schedule_at(scheduler, step: int) -> None:
    """Move a freshly built schedule to iteration ``step``: the optimizer's LR (and one-cycle momentum) become those
    of that iteration, as if ``scheduler.step()`` had been called ``step`` times.

    Every schedule here is a closed-form function of the iteration, so a resumed run rebuilds its schedule from
    the config and starts it at the checkpoint's step: bit-identical LRs when nothing changed, and a changed
    ``optim.lr``/``epochs``/``warmup_epochs``/``min_lr`` takes effect from that step.
    """
    if step <= 0:
        return
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": no optimizer step is skipped
        scheduler.step()
