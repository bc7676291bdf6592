"""Evaluation of the full network and of sub-networks (optionally after BN re-estimation)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .bn import recalibrated
from .elastic import DepthConfig, ElasticDepth

__all__ = ["evaluate", "evaluate_depth"]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device | str | None = None,
             amp_dtype: torch.dtype | None = None, progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``(x, y)`` batches, in eval mode."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=desc, leave=False)
    try:
        for x, y in it:
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            dev_type = x.device.type
            with torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation got no images: the evaluation data is empty")
    return {"acc": 100.0 * correct / total, "loss": loss_sum / total, "n": total}


def evaluate_depth(ed: ElasticDepth, config: DepthConfig | None, batches: Iterable,
                   bn_batches: Iterable | None = None, bn_images: int = 0,
                   device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None,
                   restore_bn: bool = True) -> dict[str, float]:
    """Accuracy of one sub-network (``None`` = full network).

    With ``bn_images > 0`` BatchNorm statistics are re-estimated for this configuration on ``bn_batches`` first;
    the model's original statistics are restored afterwards when ``restore_bn`` (default).
    """
    with ed.depth(config), recalibrated(ed.model, bn_batches, bn_images, device=device, restore=restore_bn):
        return evaluate(ed.model, batches, device=device, amp_dtype=amp_dtype)
