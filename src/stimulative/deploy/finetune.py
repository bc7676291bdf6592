"""Stimulative training during fine-tuning of another model (the paper's R50-ST*), e.g. a detector's backbone.

The paper's downstream recipe keeps training the backbone's sub-networks while fine-tuning: after the usual
forward/backward of the whole model, a few passes run with a sampled sub-network of the BACKBONE and a smaller
input, trained with the ground-truth loss (for a detector: its own loss dict), and then one optimizer step::

    ft = StimulativeFinetune(detector.backbone.body, num_subnets=2, min_input_scale=0.6, seed=0)
    for images, targets in loader:
        loss = sum(detector(images, targets).values())
        loss.backward()                                        # main pass: full backbone, full size
        def subnet_loss(scale):
            with detection_input_scale(detector, scale):       # smaller inputs for the sub-network passes
                return detector(images, targets)               # loss dict; summed and backpropagated
        ft(subnet_loss)                                        # sub-network passes (depth set on the backbone)
        optimizer.step(); optimizer.zero_grad()

For classification fine-tuning the same is ``StimulativeStep(..., loss="ce", min_input_scale=...)``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.bn import frozen_bn_stats
from ..core.elastic import ElasticDepth
from ..core.sampling import SampleSpace

__all__ = ["StimulativeFinetune", "detection_input_scale"]


@dataclass
class StimulativeFinetune:
    """Sub-network passes of a backbone inside any training loop, trained with the task's own loss.

    Args:
        backbone: the residual backbone (e.g. ``detector.backbone.body``) or its ``ElasticDepth``; a plain
            module is patched in place (its ``state_dict`` keys do not change).
        num_subnets: sub-network passes per call.
        space: the ``SampleSpace`` to draw depths from (default: ordered space of the backbone, ``seed``).
        min_input_scale: each pass gets ``scale ~ U[min_input_scale, 1]`` (1.0: always full size); the loss
            function decides how to apply it (``detection_input_scale`` for torchvision detectors).
        loss_weight: coefficient of every sub-network loss.
        freeze_subnet_bn: sub-network passes do not update BatchNorm running statistics (no effect on the
            ``FrozenBatchNorm2d`` of torchvision detection backbones).
        seed: seeds the depth sampling (when ``space`` is None) and the input scales.

    Example:
        >>> import torch, torchvision, stimulative as st
        >>> from stimulative.deploy.finetune import StimulativeFinetune
        >>> model = torchvision.models.resnet18(num_classes=5)
        >>> ft = StimulativeFinetune(model, num_subnets=2, min_input_scale=0.5, seed=0)
        >>> x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
        >>> torch.nn.functional.cross_entropy(model(x), y).backward()
        >>> def loss_fn(scale):
        ...     size = max(32, round(64 * scale))
        ...     return torch.nn.functional.cross_entropy(model(torch.nn.functional.interpolate(x, size)), y)
        >>> out = ft(loss_fn)
        >>> len(ft.last_configs)
        2
    """

    backbone: nn.Module | ElasticDepth
    num_subnets: int = 1
    space: SampleSpace | None = None
    min_input_scale: float = 1.0
    loss_weight: float = 1.0
    freeze_subnet_bn: bool = True
    seed: int | None = None
    ed: ElasticDepth = field(init=False, repr=False)
    rng: random.Random = field(init=False, repr=False)
    last_configs: list = field(init=False, repr=False, default_factory=list)
    last_scales: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.num_subnets, int) or self.num_subnets < 0:
            raise ValueError(f"num_subnets must be an int >= 0, got {self.num_subnets!r}")
        if not 0 < self.min_input_scale <= 1:
            raise ValueError(f"min_input_scale must be in (0, 1], got {self.min_input_scale}")
        self.ed = self.backbone if isinstance(self.backbone, ElasticDepth) else ElasticDepth(self.backbone)
        if self.space is None:
            self.space = SampleSpace.for_model(self.ed, "ordered", seed=self.seed)
        elif self.space.full_depths != self.ed.full_depths:
            raise ValueError(f"sample space depths {self.space.full_depths} do not match the backbone's "
                             f"{self.ed.full_depths}")
        self.rng = random.Random(self.seed)

    def __call__(self, loss_fn: Callable[[float], torch.Tensor | Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """Run ``num_subnets`` sub-network passes: ``loss_fn(scale)`` under a sampled backbone depth, backward.

        ``loss_fn`` returns a scalar loss or a dict of losses (summed, as torchvision detectors return them).
        Gradients accumulate; call ``optimizer.step()`` afterwards. Returns ``{"subnet": summed loss}``.
        """
        self.last_configs, self.last_scales = [], []
        total = 0.0
        for _ in range(self.num_subnets):
            config = self.space.sample()
            scale = 1.0 if self.min_input_scale >= 1 else self.rng.uniform(self.min_input_scale, 1.0)
            bn_ctx = frozen_bn_stats(self.ed.model) if self.freeze_subnet_bn else contextlib.nullcontext()
            with bn_ctx, self.ed.depth(config):
                out = loss_fn(scale)
                loss = sum(out.values()) if isinstance(out, Mapping) else out
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(f"sub-network {config} loss is {float(loss.detach())} (NaN or inf)")
                (self.loss_weight * loss).backward()
            total += float(loss.detach())
            self.last_configs.append(config)
            self.last_scales.append(scale)
        return {"subnet": total}


@contextlib.contextmanager
def detection_input_scale(detector: nn.Module, scale: float) -> Iterator[nn.Module]:
    """Inside: a torchvision detector resizes its inputs to ``scale`` times its usual size.

    torchvision detectors resize every image in ``detector.transform`` (``GeneralizedRCNNTransform``, also used
    by RetinaNet/FCOS/SSD-style models with ``min_size``/``max_size``), so smaller inputs are made there: boxes
    are rescaled with the images and losses are computed at the smaller size.
    """
    transform = getattr(detector, "transform", None)
    if transform is None or not hasattr(transform, "min_size") or not hasattr(transform, "max_size"):
        raise TypeError(f"{type(detector).__name__} has no transform with min_size/max_size "
                        "(expected a torchvision detection model)")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    min_size, max_size = transform.min_size, transform.max_size
    transform.min_size = tuple(max(1, round(s * scale)) for s in min_size)
    transform.max_size = max(1, round(max_size * scale))
    try:
        yield detector
    finally:
        transform.min_size, transform.max_size = min_size, max_size
