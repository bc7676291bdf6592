"""BatchNorm helpers: keep sub-network passes from touching running statistics, and re-estimate them.

Sub-networks see features of other depths and input sizes; if their train-mode forwards updated the running
statistics, the full network's eval statistics would be corrupted (METHOD.md "Pitfalls"). ``frozen_bn_stats``
makes a train-mode forward normalise with batch statistics but leave running statistics untouched.
``recalibrate_bn`` re-estimates running statistics with a cumulative average in train mode, as the paper does
before evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["frozen_bn_stats", "recalibrate_bn", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers in train mode use batch statistics but do not update running statistics."""
    saved = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            saved.append(m)
            m.track_running_stats = False  # with buffers present this only disables the update in train mode
    try:
        yield
    finally:
        for m in saved:
            m.track_running_stats = True


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, num_images: int = 2000,
                   forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                   device: torch.device | str | None = None, progress: bool = False) -> int:
    """Re-estimate BatchNorm running statistics on ``num_images`` training images (cumulative average).

    Runs in train mode with reset statistics, averaging the batch statistics weighted by batch size (the running
    mean is exactly the mean over all images used), then restores the previous mode and momenta. The active
    depth of an ``ElasticDepth`` model is whatever is set around this call, so call it inside
    ``ed.depth(config)`` for a sub-network.

    Args:
        model: the model (plain or depth-gated).
        batches: an iterable of ``x`` tensors or ``(x, y)`` tuples (e.g. a DataLoader over training data).
        num_images: how many images to use at most.
        forward: optional ``forward(model, x)`` (default ``model(x)``).
        device: move each batch there first.
        progress: show a tqdm bar.

    Returns:
        The number of images actually used.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="BN re-estimation", leave=False)
    try:
        for batch in it:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if seen >= num_images:
                break
            x = x[: num_images - seen]
            # running = (1 - b / (seen + b)) * running + b / (seen + b) * batch: the average over all images
            # seen, each image weighted alike (momentum=None would weight a short last batch like a full one)
            for m in bns:
                m.momentum = x.shape[0] / (seen + x.shape[0])
            if device is not None:
                x = x.to(device, non_blocking=True)
            if forward is None:
                model(x)
            else:
                forward(model, x)
            seen += x.shape[0]
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_bn got no images: the batches iterable is empty")
    return seen
