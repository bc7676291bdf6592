"""BatchNorm helpers: keep sub-network passes from touching running statistics, and re-estimate them.

Sub-networks see features of other depths and input sizes; if their train-mode forwards updated the running
statistics, the full network's eval statistics would be corrupted (docs/method.md, "Pitfalls").
``frozen_bn_stats`` makes a train-mode forward normalise with batch statistics but leave running statistics
untouched.
``recalibrate_bn`` re-estimates running statistics with a cumulative average in train mode, as the paper does
before evaluation; ``recalibrated`` is the one "save the BN buffers, re-estimate, measure, restore" block that
every evaluation of a sub-network uses::

    with ed.depth([1, 1, 1]), recalibrated(ed.model, train_batches, 2000):
        acc = evaluate(ed.model, test_batches)["acc"]      # the model's own statistics are back afterwards
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .droppath import drop_path_paused

__all__ = ["frozen_bn_stats", "recalibrate_bn", "recalibrated"]


def _tracking_bns(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


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
    bns = _tracking_bns(model)
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
        with drop_path_paused(model):  # train mode for BN statistics, but no stochastic depth
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


@contextlib.contextmanager
def recalibrated(model: nn.Module, batches: Iterable | None = None, num_images: int = 0, *,
                 device: torch.device | str | None = None,
                 forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 progress: bool = False, restore: bool = True) -> Iterator[nn.Module]:
    """Inside: BatchNorm statistics re-estimated on ``num_images`` of ``batches``; afterwards the old ones are back.

    Save the BN buffers, re-estimate (``recalibrate_bn``, for the depth active around this block), let the caller
    measure, restore. With ``num_images == 0`` nothing is changed.

    Args:
        model: the (depth-gated) model.
        batches: training batches (``x`` or ``(x, y)``); needed when ``num_images > 0``.
        num_images: images for the re-estimation (0: keep the current statistics).
        device, forward, progress: as in ``recalibrate_bn``.
        restore: put the previous statistics back on exit (False: keep the re-estimated ones).

    Example:
        >>> import torch, stimulative as st
        >>> ed = st.ElasticDepth(st.create_model("cifar_resnet_tiny", num_classes=10))
        >>> before = ed.model.bn1.running_mean.clone()
        >>> with ed.depth([1, 1, 1]), recalibrated(ed.model, [torch.randn(8, 3, 32, 32)], 8):
        ...     changed = not torch.equal(ed.model.bn1.running_mean, before)
        >>> changed, torch.equal(ed.model.bn1.running_mean, before)
        (True, True)
    """
    if num_images < 0:
        raise ValueError(f"the number of BN re-estimation images must be >= 0, got {num_images}")
    if num_images == 0:
        yield model
        return
    if batches is None:
        raise ValueError(f"BN re-estimation on {num_images} images needs training batches")
    saved = [(m, [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None])
             for m in _tracking_bns(model)] if restore else []
    try:
        recalibrate_bn(model, batches, num_images, forward=forward, device=device, progress=progress)
        yield model
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for dst, src in zip(live, buffers):
                    dst.copy_(src)
