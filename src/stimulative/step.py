"""The stimulative training step: main network + N sub-networks on the same weights, one optimizer step.

Use the functional form inside any loop::

    losses = st.stimulative_step(ed, space, x, y, num_subnets=6, kl="layer")
    optimizer.step(); optimizer.zero_grad(set_to_none=True)

or the thin class ``StimulativeStep`` that holds the options (like Composer's algorithm classes).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .bn import frozen_bn_stats
from .elastic import ElasticDepth
from .losses import KL_NORMS, SUBNET_LOSSES, at_least_fp32, normalize_logits, subnet_loss
from .sampling import SampleSpace

__all__ = ["StimulativeStep", "stimulative_step", "random_input_size", "resize_input", "NonFiniteLossError"]


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


@dataclass
class StimulativeStep:
    """One stimulative training step (ST / ST++), usable in any training loop.

    Paper: "Stimulative Training++: Go Beyond The Performance Limits of Residual Networks",
    https://arxiv.org/abs/2305.02507. ST: ``num_subnets=1, kl="plain", min_input_scale=1.0``.
    ST++: ``num_subnets=6, kl="layer", min_input_scale=0.43`` with an InterSSR space.

    Calling ``step(x, y)`` runs the main network (CE loss, backward), then ``num_subnets`` sub-networks, each
    on the ORIGINAL batch resized once to a random smaller size, with loss ``kl_weight * subnet_loss``
    (backward after each forward, so memory holds one sub-network's activations). Gradients accumulate;
    the caller calls ``optimizer.step()`` and ``zero_grad()``.

    Args:
        ed: the ``ElasticDepth`` wrapping the model.
        space: the ``SampleSpace`` to draw sub-networks from.
        num_subnets: exact number of sub-network forward/backward passes per step (0 = common training).
        kl: logit normalisation before the sub-network loss: "plain" (ST), "layer" or "l2" (KL-).
        amplitude: KL- amplitude (float or "adaptive": the teacher's per-sample logit std).
        temperature: softmax temperature T (loss multiplied by T^2).
        kl_weight: lambda, the coefficient of every sub-network loss (change it per epoch for ramps).
        loss: sub-network loss: "kl" (default), "soft_ce", "ce" (ground truth), "mse", "dkd".
        normalize_main: also KL- normalise the main logits before the main CE (as the reference code does).
        min_input_scale: sub-networks see inputs of random size in [min_input_scale*H, H]; 1.0 disables.
        freeze_subnet_bn: sub-network passes do not update BatchNorm running statistics (default True).
        model: the module to call (e.g. the ``DistributedDataParallel`` wrapper); default ``ed.model``.
        criterion: main loss ``criterion(logits, y)``; default cross-entropy (``label_smoothing`` applies).
        label_smoothing: for the default main criterion.
        scaler: optional ``torch.amp.GradScaler``; losses are scaled before backward.
        seed: seeds the input-size generator.
        check_finite: raise ``NonFiniteLossError`` on NaN/inf losses (before their backward).

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
    kl: str = "plain"
    amplitude: float | str = 1.0
    temperature: float = 1.0
    kl_weight: float = 1.0
    loss: str = "kl"
    normalize_main: bool = False
    min_input_scale: float = 1.0
    freeze_subnet_bn: bool = True
    model: nn.Module | None = None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    label_smoothing: float = 0.0
    scaler: torch.amp.GradScaler | None = None
    seed: int | None = None
    check_finite: bool = True
    rng: random.Random = field(init=False, repr=False)
    last_configs: list = field(init=False, repr=False, default_factory=list)
    last_sizes: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.kl not in KL_NORMS:
            raise ValueError(f"unknown kl {self.kl!r}; valid choices: {', '.join(KL_NORMS)}")
        if self.loss not in SUBNET_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid choices: {', '.join(SUBNET_LOSSES)}")
        if not isinstance(self.num_subnets, int) or self.num_subnets < 0:
            raise ValueError(f"num_subnets must be an int >= 0, got {self.num_subnets!r}")
        if not 0 < self.min_input_scale <= 1:
            raise ValueError(f"min_input_scale must be in (0, 1], got {self.min_input_scale}")
        if self.space.full_depths != self.ed.full_depths:
            raise ValueError(f"sample space depths {self.space.full_depths} do not match the model's "
                             f"{self.ed.full_depths}")
        if self.model is None:
            self.model = self.ed.model
        if _is_ddp(self.model) and self.num_subnets > 0 and not self.model.find_unused_parameters:
            raise ValueError("sub-networks skip blocks, so DistributedDataParallel needs "
                             "find_unused_parameters=True")
        self.rng = random.Random(self.seed)

    # ---------------------------------------------------------------------------------------------------------
    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _main_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.normalize_main:
            logits = normalize_logits(logits, self.kl, self.amplitude)
        if self.criterion is not None:
            return self.criterion(logits, y)
        return F.cross_entropy(at_least_fp32(logits), y, label_smoothing=self.label_smoothing)

    def _forward_subnet(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        try:
            return self.model(x)
        except (RuntimeError, AssertionError, ValueError) as err:
            if tuple(size) != tuple(self._full_size):
                raise ValueError(
                    f"the model rejected a {size[0]}x{size[1]} sub-network input (full size "
                    f"{self._full_size[0]}x{self._full_size[1]}): {str(err).splitlines()[0].rstrip('.')}. Set "
                    "min_input_scale=1.0, or build the model to accept any size (timm ViT: dynamic_img_size=True "
                    "and dynamic_img_pad=True)"
                ) from err
            raise

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Forward/backward of the main network and the sub-networks; returns float losses for logging."""
        model = self.model
        ddp = _is_ddp(model)
        n = self.num_subnets
        self.last_configs, self.last_sizes = [], []
        self._full_size = tuple(x.shape[-2:])
        # DDP: every backward but the last runs under no_sync, so gradients are all-reduced once per step.
        sync_ctx = model.no_sync if ddp and n > 0 else contextlib.nullcontext
        with sync_ctx():
            with self.ed.depth(None):
                logits = model(x)
            main = self._main_loss(logits, y)
            if self.check_finite:
                _check_finite(main, "main network")
            self._backward(main)
        teacher = logits.detach()
        del logits
        subnet_total = 0.0
        for k in range(n):
            config = self.space.sample()
            size = random_input_size(x.shape[-2], x.shape[-1], self.min_input_scale, self.rng) \
                if self.min_input_scale < 1 else self._full_size
            xk = resize_input(x, size)  # always from the ORIGINAL batch
            last = k == n - 1
            ctx = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
            bn_ctx = frozen_bn_stats(self.ed.model) if self.freeze_subnet_bn else contextlib.nullcontext()
            with ctx, bn_ctx, self.ed.depth(config):
                student = self._forward_subnet(xk, size)
                loss = self.kl_weight * subnet_loss(student, teacher, y, kind=self.loss, norm=self.kl,
                                                    amplitude=self.amplitude, temperature=self.temperature)
                if self.check_finite:
                    _check_finite(loss, f"sub-network {config}")
                self._backward(loss)
            subnet_total += float(loss.detach())
            self.last_configs.append(config)
            self.last_sizes.append(tuple(size))
        main_value = float(main.detach())
        return {"loss": main_value + subnet_total, "main": main_value, "subnet": subnet_total}


def stimulative_step(ed: ElasticDepth, space: SampleSpace, x: torch.Tensor, y: torch.Tensor,
                     **options) -> dict[str, float]:
    """Functional form of ``StimulativeStep``: ``stimulative_step(ed, space, x, y, num_subnets=6, kl="layer")``.

    Builds a fresh step each call: pass ``seed``/``scaler``/``model`` as for the class. For a long loop prefer the
    class (it keeps its random generator between steps).
    """
    return StimulativeStep(ed, space, **options)(x, y)
