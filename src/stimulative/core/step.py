"""The stimulative training step: main network + N sub-networks on the same weights, one optimizer step.

The function ``stimulative_step`` does the work; the thin class ``StimulativeStep`` holds the options, the
random generator, the step counter and the recipe's per-epoch schedule (Composer's pattern), and is what a
training loop calls::

    step = st.StimulativeStep(ed, space, num_subnets=6, kl_norm="layer")
    for epoch in range(epochs):
        step.set_epoch(epoch, epochs)            # st.start_epoch / st.kl_schedule of a recipe
        for x, y in loader:
            losses = step(x, y)                  # backward done inside (or through ``backward=``)
            optimizer.step(); optimizer.zero_grad(set_to_none=True)

A framework that owns backward and gradient synchronisation passes ``backward=`` (Lightning:
``self.manual_backward``; Accelerate: ``accelerator.backward``) and ``no_sync=`` (a zero-argument callable
returning the context in which gradients are NOT all-reduced, e.g. ``lambda: accelerator.no_sync(model)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bn import frozen_bn_stats
from .elastic import ElasticDepth
from .exits import PrefixExits, random_layers_active
from .losses import (
    KL_NORMS,
    KL_SCHEDULES,
    SUBNET_LOSSES,
    at_least_fp32,
    kl_weight_schedule,
    normalize_logits,
    subnet_loss,
)
from .sampling import SampleSpace

__all__ = [
    "StepOptions", "StimulativeStep", "stimulative_step", "prefix_step_applies", "random_input_size", "resize_input",
    "NonFiniteLossError", "RENAMED_OPTIONS",
]


class NonFiniteLossError(FloatingPointError):
    """Raised when the main or a sub-network loss is NaN or infinite."""


def random_input_size(height: int, width: int, min_scale: float, rng: random.Random) -> tuple[int, int]:
    """Random smaller size: r ~ U{floor(H*min_scale)..H}; the width keeps the aspect ratio."""
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_input_scale must be in (0, 1], got {min_scale}")
    lo = max(1, math.floor(height * min_scale))
    r = rng.randint(lo, height)
    return r, max(1, round(width * r / height))


def resize_input(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an (N, C, H, W) batch (no second normalisation: x is already normalised)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(f"{what} loss is {loss.item()} (NaN or inf); lower the learning rate, "
                                 "check the data, or use fp32/bf16 instead of fp16")


def _grad_vector(params: list[torch.Tensor]) -> torch.Tensor:
    """All gradients as one fp32 vector (zeros for parameters without a gradient yet)."""
    return torch.cat([(p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32))
                      .reshape(-1) for p in params])


def _logit_std(logits: torch.Tensor) -> float:
    """Mean over the batch of each sample's logit std over classes (the scale KL- removes)."""
    return float(at_least_fp32(logits.detach()).std(dim=-1, unbiased=False).mean())


# Options renamed in this release: the old keyword is read with a DeprecationWarning until the next one.
RENAMED_OPTIONS = {"kl": "kl_norm"}


def renamed_options(values: dict[str, Any], where: str, stacklevel: int = 3) -> dict[str, Any]:
    """``values`` with every old option name (``RENAMED_OPTIONS``) replaced by the new one, with a
    ``DeprecationWarning`` naming both; the old and the new name given with different values is an error."""
    for old, new in RENAMED_OPTIONS.items():
        if old not in values:
            continue
        warnings.warn(f"{where}: the option {old!r} is now {new!r}; {old!r} is read until the next release",
                      DeprecationWarning, stacklevel=stacklevel)
        values = dict(values)
        value = values.pop(old)
        if new in values and values[new] != value:
            raise ValueError(f"{where}: {old!r}={value!r} (the old name of {new!r}) contradicts {new}={values[new]!r}")
        values[new] = value
    return values


def _accepts_renamed_options(cls: type) -> type:
    """Let the dataclass ``cls`` take the old names of renamed options as keywords (``renamed_options``)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **renamed_options(kwargs, cls.__name__))

    cls.__init__ = __init__
    return cls


@_accepts_renamed_options
@dataclass(frozen=True)
class StepOptions:
    """What one stimulative step does: the method's options, checked when built.

    ``StimulativeStep`` holds the same options (and the per-epoch schedule) and passes them to
    ``stimulative_step`` as a ``StepOptions`` on every call; ``stimulative_step`` also takes them as keywords.

    Args:
        num_subnets: exact number of sub-network forward/backward passes per step (0 = common training).
        kl_norm: how the sub-network loss normalises the logits first (KL-, docs/method.md): "plain" (none:
            ST), "layer", "layer_sg" or "l2". ``loss`` chooses the divergence itself. Was ``kl`` (read, with a
            ``DeprecationWarning``, until the next release).
        amplitude: KL- amplitude (float or "adaptive": the teacher's per-sample logit std).
        temperature: softmax temperature T (loss multiplied by T^2).
        kl_weight: lambda, the coefficient of every sub-network loss.
        loss: the sub-network loss (the divergence): "kl" (default), "soft_ce", "ce" (ground truth), "mse", "dkd".
        normalize_main: also KL- normalise the main logits before the main CE (as the reference code does).
        min_input_scale: sub-networks see inputs of random size in [min_input_scale*H, H]; 1.0 disables.
        subnet_fraction: sub-networks see only the first ``ceil(fraction * batch)`` samples (cost lever).
        freeze_subnet_bn: sub-network passes do not update BatchNorm running statistics (default True).
        project_conflicts: when the summed sub-network gradient points against the main loss's gradient
            (negative dot product), remove that component (PCGrad's projection, Yu et al. 2020,
            https://arxiv.org/abs/2001.06782): the sub-networks then never undo the main network's descent
            direction to first order. Needs the whole gradient on one process (not with DDP / ``no_sync``).
        label_smoothing: for the default main criterion (cross-entropy).
        check_finite: raise ``NonFiniteLossError`` on NaN/inf losses (before their backward).
    """

    num_subnets: int = 1
    kl_norm: str = "plain"
    amplitude: float | str = 1.0
    temperature: float = 1.0
    kl_weight: float = 1.0
    loss: str = "kl"
    normalize_main: bool = False
    min_input_scale: float = 1.0
    subnet_fraction: float = 1.0
    freeze_subnet_bn: bool = True
    project_conflicts: bool = False
    label_smoothing: float = 0.0
    check_finite: bool = True

    def __post_init__(self) -> None:
        if self.kl_norm not in KL_NORMS:
            raise ValueError(f"unknown kl_norm {self.kl_norm!r}; valid choices: {', '.join(KL_NORMS)}")
        if self.loss not in SUBNET_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid choices: {', '.join(SUBNET_LOSSES)}")
        if not isinstance(self.num_subnets, int) or self.num_subnets < 0:
            raise ValueError(f"num_subnets must be an int >= 0, got {self.num_subnets!r}")
        if not 0 < self.min_input_scale <= 1:
            raise ValueError(f"min_input_scale must be in (0, 1], got {self.min_input_scale}")
        if not 0 < self.subnet_fraction <= 1:
            raise ValueError(f"subnet_fraction must be in (0, 1], got {self.subnet_fraction}")


_STEP_OPTIONS = tuple(f.name for f in fields(StepOptions))


def _merge_options(options: StepOptions | None = None, **values: Any) -> StepOptions:
    """``options`` (default: ``StepOptions()``) with ``values`` (option keywords, old names included) replaced."""
    values = renamed_options(values, "stimulative_step", stacklevel=4)
    unknown = sorted(set(values) - set(_STEP_OPTIONS))
    if unknown:
        raise TypeError(f"stimulative_step got unknown option(s) {', '.join(unknown)}; the options are "
                        f"{', '.join(_STEP_OPTIONS)}")
    options = StepOptions() if options is None else options
    return dataclasses.replace(options, **values) if values else options


def stimulative_step(
    ed: ElasticDepth,
    space: SampleSpace,
    x: torch.Tensor,
    y: torch.Tensor,
    options: StepOptions | None = None,
    *,
    model: nn.Module | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    rng: random.Random | None = None,
    exits: PrefixExits | None = None,
    draws: list | None = None,
    stats: dict | None = None,
    grad_norms: bool = False,
    **option_values: Any,
) -> dict[str, float]:
    """One stimulative training step: main network + ``num_subnets`` sub-networks, gradients accumulated.

    Paper: "Stimulative Training++: Go Beyond The Performance Limits of Residual Networks",
    https://arxiv.org/abs/2305.02507 (docs/method.md, "The ST objective"). The caller then calls
    ``optimizer.step()`` and ``zero_grad()``. What the step does is ``options`` (a ``StepOptions``), and any
    of its fields given as keywords (``num_subnets=6, kl_norm="layer"``) replace those of ``options``. How it
    runs in the caller's loop (``model``, ``criterion``, ``scaler``, ``backward``, ``no_sync``, ``exits``) is as
    in ``StimulativeStep`` (see there); the function-only arguments:

    Args:
        rng: generator of the random input sizes (``random.Random``); a fresh unseeded one if None.
        draws: if a list is passed, ``(config, size)`` of every sub-network pass is appended (cheap: no
            extra computation; ``StimulativeStep`` keeps them as ``last_configs``/``last_sizes``).
        stats: if a dict is passed, it is filled with what this step drew and saw: ``configs`` and ``sizes`` of
            the sub-networks, every sub-network loss (``loss_sub``), the mean per-sample logit std of the teacher
            and of every student (``std_main``, ``std_sub``).
        grad_norms: also put the gradient norm of the main loss and of each sub-network loss into ``stats``
            (``grad_main``, ``grad_sub``: the norm of each backward's own contribution) and the cosine between
            each sub-network's gradient and the main loss's (``cos_sub``: < 0 means the sub-network pulls the
            shared weights against the main objective); costs one copy of the gradients per pass.
        exits: a ``PrefixExits``: when this step's sub-networks are prefixes at full input size
            (``prefix_step_applies``), the model has no active dropout or drop path (exits would share the main
            pass's random draws) and the exits were checked to equal the skipped forward (``PrefixExits.matches``),
            they are read off the main forward and all losses go through one backward (same losses and gradients
            as separate passes, one forward instead of ``1 + num_subnets``).

    Returns:
        ``{"loss", "main", "subnet"}`` as Python floats (for logging).

    Example:
        >>> import torch, stimulative as st
        >>> model = st.create_model("cifar_resnet20", num_classes=10)
        >>> ed = st.ElasticDepth(model)
        >>> space = st.SampleSpace.ordered(ed.full_depths, seed=0)
        >>> losses = st.stimulative_step(ed, space, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> sorted(losses)
        ['loss', 'main', 'subnet']
    """
    opts = _merge_options(options, **option_values)
    _check_space(ed, space)
    model = ed.model if model is None else model
    if no_sync is None and _is_ddp(model):
        no_sync = model.no_sync
    if grad_norms and stats is None:
        raise ValueError("grad_norms=True needs a stats dict to write into")
    n = opts.num_subnets
    project = opts.project_conflicts and n > 0
    if project and no_sync is not None:
        raise ValueError("project_conflicts needs the whole gradient on one process; it does not support "
                         "DistributedDataParallel / no_sync")
    passes = _Passes(ed, model, opts, criterion, scaler, backward, no_sync, draws, stats)
    if exits is not None and n > 0 and prefix_step_applies(space, opts.min_input_scale, opts.subnet_fraction,
                                                          opts.project_conflicts, grad_norms) \
            and not random_layers_active(ed.model) and exits.matches(model, x):
        return _prefix_step(passes, exits, space, x, y)
    rng = random.Random() if rng is None else rng
    projection = _ConflictProjection(ed.model) if project else None
    probe = _GradientProbe(ed.model) if grad_norms else None
    teacher, main = passes.main_pass(x, y)
    if projection is not None:
        projection.main_done()
    if stats is not None:
        stats.update(std_main=_logit_std(teacher), std_sub=[], loss_sub=[], configs=[], sizes=[])
        if probe is not None:
            stats.update(grad_main=probe.since()[0], grad_sub=[], cos_sub=[])
    batch = _subnet_batch(x, y, teacher, opts.subnet_fraction)
    subnet_total = 0.0
    for k in range(n):
        subnet_total += passes.subnet_pass(space, batch, rng, last=k == n - 1, probe=probe)
    if projection is not None:
        dot = projection.apply()
        if stats is not None:
            stats["projected"] = dot < 0
    main_value = float(main.detach())
    return {"loss": main_value + subnet_total, "main": main_value, "subnet": subnet_total}


@dataclass
class _SubnetBatch:
    """What every sub-network sees: the (first rows of the) batch, its labels and the teacher's logits."""

    x: torch.Tensor
    y: torch.Tensor
    teacher: torch.Tensor
    full_size: tuple[int, int]


def _subnet_batch(x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, fraction: float) -> _SubnetBatch:
    """The sub-networks' batch: all of it, or its first ``ceil(fraction * batch)`` rows (``subnet_fraction``)."""
    full_size = tuple(x.shape[-2:])
    if fraction >= 1:  # the teacher may have more rows than x (one per token for an LM)
        return _SubnetBatch(x, y, teacher, full_size)
    rows = max(1, math.ceil(fraction * x.shape[0]))
    if teacher.shape[0] != x.shape[0]:
        raise ValueError("subnet_fraction < 1 needs one logit row per input sample "
                         f"(got {teacher.shape[0]} rows for {x.shape[0]} samples)")
    return _SubnetBatch(x[:rows], y[:rows], teacher[:rows], full_size)


@dataclass
class _Passes:
    """What the passes of one step share: the model, the options, how to run backward, where results go."""

    ed: ElasticDepth
    model: nn.Module
    opts: StepOptions
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    scaler: torch.amp.GradScaler | None
    backward: Callable[[torch.Tensor], None] | None
    no_sync: Callable[[], contextlib.AbstractContextManager] | None
    draws: list | None
    stats: dict | None

    def run_backward(self, value: torch.Tensor) -> None:
        scaled = self.scaler.scale(value) if self.scaler is not None else value
        scaled.backward() if self.backward is None else self.backward(scaled)

    def main_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE (or ``criterion``) of the main logits, KL- normalised first if ``normalize_main``."""
        o = self.opts
        main_logits = normalize_logits(logits, o.kl_norm, o.amplitude) if o.normalize_main else logits
        if self.criterion is not None:
            main = self.criterion(main_logits, y)
        else:
            main = F.cross_entropy(at_least_fp32(main_logits), y, label_smoothing=o.label_smoothing)
        if o.check_finite:
            _check_finite(main, "main network")
        return main

    def subnet_loss(self, student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, config: Any) -> torch.Tensor:
        """``kl_weight * subnet_loss`` of one sub-network against the detached teacher."""
        o = self.opts
        value = o.kl_weight * subnet_loss(student, teacher, y, kind=o.loss, norm=o.kl_norm, amplitude=o.amplitude,
                                          temperature=o.temperature)
        if o.check_finite:
            _check_finite(value, f"sub-network {config}")
        return value

    def main_pass(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of the full network; returns the detached logits (the teacher) and the loss.

        With sub-networks to follow, it runs in ``no_sync``: gradients are all-reduced once, after the last pass.
        """
        sync_later = self.no_sync is not None and self.opts.num_subnets > 0
        with self.no_sync() if sync_later else contextlib.nullcontext():
            with self.ed.depth(None):
                logits = self.model(x)
            main = self.main_loss(logits, y)
            self.run_backward(main)
        return logits.detach(), main

    def subnet_pass(self, space: SampleSpace, batch: _SubnetBatch, rng: random.Random, last: bool,
                    probe: _GradientProbe | None) -> float:
        """Draw one sub-network and an input size, forward it on the resized ORIGINAL batch, backward its loss."""
        o = self.opts
        config = space.sample()
        size = random_input_size(batch.full_size[0], batch.full_size[1], o.min_input_scale, rng) \
            if o.min_input_scale < 1 else batch.full_size
        xk = resize_input(batch.x, size)
        sync = self.no_sync() if (self.no_sync is not None and not last) else contextlib.nullcontext()
        bn = frozen_bn_stats(self.ed.model) if o.freeze_subnet_bn else contextlib.nullcontext()
        with sync, bn, self.ed.depth(config):
            student = _forward_subnet(self.model, xk, size, batch.full_size)
            value = self.subnet_loss(student, batch.teacher, batch.y, config)
            self.run_backward(value)
        self.record(config, tuple(size), student, value, probe)
        return float(value.detach())

    def record(self, config: Any, size: tuple, student: torch.Tensor, value: torch.Tensor,
               probe: _GradientProbe | None) -> None:
        """Append one sub-network pass to ``draws`` and ``stats``."""
        if self.draws is not None:
            self.draws.append((config, size))
        if self.stats is None:
            return
        self.stats["configs"].append(config)
        self.stats["sizes"].append(size)
        self.stats["std_sub"].append(_logit_std(student))
        self.stats["loss_sub"].append(float(value.detach()))
        if probe is not None:
            norm, cos = probe.since()
            self.stats["cos_sub"].append(cos)
            self.stats["grad_sub"].append(norm)


class _GradientProbe:
    """The gradient each backward adds: its norm, and its cosine to the main loss's gradient (``grad_norms``)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.previous = _grad_vector(self.params)
        self.main: torch.Tensor | None = None

    def since(self) -> tuple[float, float | None]:
        """Norm of the gradient added since the last call and its cosine to the first call's (None for that)."""
        now = _grad_vector(self.params)
        delta = now - self.previous
        self.previous = now
        cos = None
        if self.main is None:
            self.main = delta
        else:
            cos = float(F.cosine_similarity(delta, self.main, dim=0))
        return float(delta.norm()), cos


class _ConflictProjection:
    """``project_conflicts``: the gradient before the step and after the main pass, then the projection."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.start = _grad_vector(self.params)
        self.after_main: torch.Tensor | None = None

    def main_done(self) -> None:
        self.after_main = _grad_vector(self.params)

    def apply(self) -> float:
        return _project_out_conflict(self.params, self.start, self.after_main)


def prefix_step_applies(space: SampleSpace, min_input_scale: float = 1.0, subnet_fraction: float = 1.0,
                        project_conflicts: bool = False, grad_norms: bool = False) -> bool:
    """Whether a step's sub-networks can be read off the main forward: one stage sampled as prefixes (ordered,
    inter-stage or given depths), full-size inputs, the whole batch, and no per-loss gradient surgery or diagnostics."""
    return (len(space.full_depths) == 1 and getattr(space, "kind", None) in ("ordered", "inter_stage", "choices")
            and min_input_scale >= 1
            and subnet_fraction >= 1 and not project_conflicts and not grad_norms)


def _prefix_step(passes: _Passes, exits: PrefixExits, space: SampleSpace, x: torch.Tensor,
                 y: torch.Tensor) -> dict[str, float]:
    """``stimulative_step`` with prefix sub-networks read off one forward and one backward of the summed loss."""
    configs = [space.sample() for _ in range(passes.opts.num_subnets)]
    with exits.ed.depth(None):  # the full network whatever depth the caller set, as the separate main pass
        logits, students = exits(passes.model, x, [c[0] for c in configs])
    main = passes.main_loss(logits, y)
    teacher = logits.detach()
    values = [passes.subnet_loss(student, teacher, y, config) for config, student in zip(configs, students)]
    passes.run_backward(main + sum(values))  # autograd sums the paths: the gradients of separate backward passes
    full_size = tuple(x.shape[-2:])
    if passes.stats is not None:
        passes.stats.update(std_main=_logit_std(teacher), std_sub=[_logit_std(s) for s in students],
                            loss_sub=[float(v.detach()) for v in values], configs=configs,
                            sizes=[full_size] * len(configs))
    if passes.draws is not None:
        passes.draws.extend((config, full_size) for config in configs)
    main_value = float(main.detach())
    subnet_total = sum(float(v.detach()) for v in values)
    return {"loss": main_value + subnet_total, "main": main_value, "subnet": subnet_total}


def _project_out_conflict(params: list[torch.Tensor], start: torch.Tensor, after_main: torch.Tensor) -> float:
    """Remove from the sub-network gradient its component along -main gradient; returns their dot product."""
    total = _grad_vector(params)
    main, sub = after_main - start, total - after_main
    dot = float(torch.dot(sub, main))
    if dot < 0:
        sub = sub - dot / float(torch.dot(main, main)) * main
        new, offset = start + main + sub, 0
        for p in params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(new[offset:offset + n].view_as(p.grad).to(p.grad.dtype))
            offset += n
    return dot


def _check_space(ed: ElasticDepth, space: SampleSpace) -> None:
    if space.full_depths != ed.full_depths:
        raise ValueError(f"sample space depths {space.full_depths} do not match the model's {ed.full_depths}")


def _forward_subnet(model: nn.Module, x: torch.Tensor, size: tuple[int, int], full_size: tuple) -> torch.Tensor:
    try:
        return model(x)
    except (RuntimeError, AssertionError, ValueError) as err:
        if tuple(size) != tuple(full_size):
            raise ValueError(
                f"the model rejected a {size[0]}x{size[1]} sub-network input (full size "
                f"{full_size[0]}x{full_size[1]}): {str(err).splitlines()[0].rstrip('.')}. Set "
                "min_input_scale=1.0, or build the model to accept any size (timm ViT: dynamic_img_size=True "
                "and dynamic_img_pad=True)"
            ) from err
        raise


# Options of ``StimulativeStep`` that ``from_config`` reads from a recipe's ``st`` section.
_CONFIG_FIELDS = ("num_subnets", "kl_norm", "amplitude", "temperature", "kl_weight", "kl_schedule", "start_epoch",
                  "loss", "normalize_main", "min_input_scale", "subnet_fraction", "subnet_every",
                  "freeze_subnet_bn", "project_conflicts")


@_accepts_renamed_options
@dataclass
class StimulativeStep:
    """One stimulative training step (ST / ST++), usable in any training loop.

    Paper: "Stimulative Training++: Go Beyond The Performance Limits of Residual Networks",
    https://arxiv.org/abs/2305.02507. ST: ``num_subnets=1, kl_norm="plain", min_input_scale=1.0``.
    ST++: ``num_subnets=6, kl_norm="layer", min_input_scale=0.43`` with an InterSSR space.

    Calling ``step(x, y)`` runs ``stimulative_step``: the main network (CE loss, backward), then
    ``num_subnets`` sub-networks, each on the ORIGINAL batch resized once to a random smaller size, with loss
    ``kl_weight * subnet_loss`` (backward after each forward, so memory holds one sub-network's
    activations). Gradients accumulate; the caller calls ``optimizer.step()`` and ``zero_grad()``.
    ``set_epoch(epoch, epochs)`` applies ``start_epoch`` and ``kl_schedule`` (as the recipes do).

    Args:
        ed: the ``ElasticDepth`` wrapping the model.
        space: the ``SampleSpace`` to draw sub-networks from.
        num_subnets: exact number of sub-network forward/backward passes per step (0 = common training).
        kl_norm: logit normalisation before the sub-network loss: "plain" (ST), "layer", "layer_sg" or "l2"
            (KL-); ``loss`` chooses the divergence. Was ``kl`` (read with a ``DeprecationWarning`` until the
            next release).
        amplitude: KL- amplitude (float or "adaptive": the teacher's per-sample logit std).
        temperature: softmax temperature T (loss multiplied by T^2).
        kl_weight: lambda, the base coefficient of every sub-network loss. The paper uses 1 per sub-network;
            on short CIFAR budgets 1/num_subnets measured better (the sub-network gradients together then weigh
            as much as one and no longer stall the main network early in training; docs/evidence.md).
        kl_schedule: "constant", "cosine_up" or "cosine_down": lambda per epoch (``set_epoch``).
        start_epoch: first epoch that trains sub-networks (``set_epoch``).
        loss: the sub-network loss (the divergence): "kl" (default), "soft_ce", "ce" (ground truth), "mse", "dkd".
        normalize_main: also KL- normalise the main logits before the main CE (as the reference code does).
        min_input_scale: sub-networks see inputs of random size in [min_input_scale*H, H]; 1.0 disables.
        subnet_fraction: sub-networks see only the first ``ceil(fraction * batch)`` samples (cost lever).
        subnet_every: train sub-networks on every k-th call only (cost lever; 1 = every step).
        freeze_subnet_bn: sub-network passes do not update BatchNorm running statistics (default True).
        project_conflicts: remove the part of the sub-network gradient that opposes the main gradient
            (``StepOptions``; not with DDP).
        model: the module to call (e.g. the ``DistributedDataParallel`` wrapper); default ``ed.model``.
        criterion: main loss ``criterion(logits, y)``; default cross-entropy (``label_smoothing`` applies).
        label_smoothing: for the default main criterion.
        scaler: optional ``torch.amp.GradScaler``; losses are scaled before backward.
        backward: ``backward(loss)`` replaces ``loss.backward()`` for every pass (e.g. Lightning's
            ``manual_backward``, Accelerate's ``accelerator.backward``).
        no_sync: zero-argument callable returning the context that suppresses gradient all-reduce; the main
            pass and all sub-network passes but the last run in it. Default: ``model.no_sync`` under DDP.
        seed: seeds the input-size generator.
        check_finite: raise ``NonFiniteLossError`` on NaN/inf losses (before their backward).
        stats_every: every k-th call, keep that step's diagnostics (``stimulative_step``'s ``stats`` with
            ``grad_norms``) in ``last_stats``; other calls set it to None (0 = never).
        exits: a ``PrefixExits`` (``stimulative.core.exits``): prefix sub-networks at full input size are read
            off the main forward, one backward per step (single-stage models: LMs, ViTs); the instrumented
            steps of ``stats_every`` and any other step keep the separate passes.

    Example:
        >>> import torch, stimulative as st
        >>> model = st.create_model("cifar_resnet20", num_classes=10)
        >>> ed = st.ElasticDepth(model)
        >>> step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> losses = step(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> opt.step(); opt.zero_grad()
        >>> sorted(losses)
        ['loss', 'main', 'subnet']
    """

    ed: ElasticDepth
    space: SampleSpace
    num_subnets: int = 1
    kl_norm: str = "plain"
    amplitude: float | str = 1.0
    temperature: float = 1.0
    kl_weight: float = 1.0
    kl_schedule: str = "constant"
    start_epoch: int = 0
    loss: str = "kl"
    normalize_main: bool = False
    min_input_scale: float = 1.0
    subnet_fraction: float = 1.0
    subnet_every: int = 1
    freeze_subnet_bn: bool = True
    project_conflicts: bool = False
    model: nn.Module | None = None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    label_smoothing: float = 0.0
    scaler: torch.amp.GradScaler | None = None
    backward: Callable[[torch.Tensor], None] | None = None
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None
    seed: int | None = None
    check_finite: bool = True
    stats_every: int = 0
    exits: PrefixExits | None = None
    rng: random.Random = field(init=False, repr=False)
    calls: int = field(init=False, repr=False, default=0)
    epoch_weight: float = field(init=False, repr=False, default=1.0)
    epoch_active: bool = field(init=False, repr=False, default=True)
    last_configs: list = field(init=False, repr=False, default_factory=list)
    last_sizes: list = field(init=False, repr=False, default_factory=list)
    last_stats: dict | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.options()  # checks the options
        _check_space(self.ed, self.space)
        if self.kl_schedule not in KL_SCHEDULES:
            raise ValueError(f"unknown kl_schedule {self.kl_schedule!r}; valid choices: {', '.join(KL_SCHEDULES)}")
        if not isinstance(self.subnet_every, int) or self.subnet_every < 1:
            raise ValueError(f"subnet_every must be an int >= 1, got {self.subnet_every!r}")
        if self.model is None:
            self.model = self.ed.model
        if _is_ddp(self.model) and self.num_subnets > 0 and not self.model.find_unused_parameters:
            raise ValueError("sub-networks skip blocks, so DistributedDataParallel needs "
                             "find_unused_parameters=True")
        self.rng = random.Random(self.seed)
        self.epoch_weight, self.epoch_active = self.kl_weight, True

    @classmethod
    def from_config(cls, st_config: Any, ed: ElasticDepth, space: SampleSpace | None = None,
                    **options: Any) -> StimulativeStep:
        """Build the step of a recipe's ``st`` section (``cfg.st``): same options, same schedule.

        ``space`` defaults to ``SampleSpace.for_model(ed, st.sampling, ranges=st.ranges, depths=st.depths)``; ``options`` (model,
        criterion, scaler, backward, no_sync, seed, stats_every...) are passed on.

        Example:
            >>> import stimulative as st
            >>> from stimulative import STConfig
            >>> ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
            >>> step = st.StimulativeStep.from_config(STConfig(num_subnets=3, kl_schedule="cosine_up"), ed)
            >>> step.set_epoch(0, 10); step.active_kl_weight
            0.0
        """
        if space is None:
            space = SampleSpace.for_model(ed, st_config.sampling, ranges=st_config.ranges,
                                          seed=options.pop("space_seed", None),
                                          depths=getattr(st_config, "depths", None))
        values = {name: getattr(st_config, name) for name in _CONFIG_FIELDS if hasattr(st_config, name)}
        for old, new in RENAMED_OPTIONS.items():  # a config object of an older release
            if new not in values and hasattr(st_config, old):
                values[old] = getattr(st_config, old)
        return cls(ed, space, **values, **options)

    @property
    def kl(self) -> str:
        """Deprecated: the old name of ``kl_norm`` (read until the next release)."""
        warnings.warn("StimulativeStep.kl is now StimulativeStep.kl_norm", DeprecationWarning, stacklevel=2)
        return self.kl_norm

    def options(self, **changes: Any) -> StepOptions:
        """This step's ``StepOptions`` (what ``stimulative_step`` gets), with ``changes`` applied."""
        values = {name: getattr(self, name) for name in _STEP_OPTIONS}
        values.update(changes)
        return StepOptions(**values)

    def set_epoch(self, epoch: float, epochs: float) -> None:
        """Apply the per-epoch schedule: no sub-networks before ``start_epoch``, lambda from ``kl_schedule``."""
        self.epoch_weight = kl_weight_schedule(self.kl_schedule, epoch, epochs, self.kl_weight, self.start_epoch)
        self.epoch_active = epoch >= self.start_epoch

    @property
    def active_kl_weight(self) -> float:
        """The lambda of this epoch (0 while no sub-networks are trained)."""
        return self.epoch_weight if self.epoch_active and self.num_subnets else 0.0

    @property
    def active_subnets(self) -> int:
        """Sub-network passes the next call will run (0 before ``start_epoch`` and off ``subnet_every`` steps)."""
        if not self.epoch_active or self.calls % self.subnet_every:
            return 0
        return self.num_subnets

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Forward/backward of the main network and the sub-networks; returns float losses for logging."""
        want_stats = self.stats_every > 0 and self.calls % self.stats_every == 0
        stats: dict | None = {} if want_stats else None  # diagnostics cost syncs: only on instrumented steps
        draws: list = []
        n = self.active_subnets
        self.calls += 1
        losses = stimulative_step(
            self.ed, self.space, x, y, self.options(num_subnets=n, kl_weight=self.epoch_weight), model=self.model,
            criterion=self.criterion, scaler=self.scaler, backward=self.backward, no_sync=self.no_sync,
            rng=self.rng, exits=self.exits, draws=draws, stats=stats, grad_norms=want_stats)
        self.last_configs = [config for config, _ in draws]
        self.last_sizes = [size for _, size in draws]
        self.last_stats = stats
        return losses
