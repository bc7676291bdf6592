"""Loafing by depth for LMs: the validation next-token loss of every prefix depth inside one model."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..core.tokens import TokenLogits, next_token_targets

__all__ = ["depth_losses"]


@torch.no_grad()
def depth_losses(ed, batches: Iterable[torch.Tensor], depths: Sequence[int] | None = None,
                 device: torch.device | str | None = None) -> dict[int, dict[str, float]]:
    """``{k: {"loss", "ppl", "tokens"}}``: mean next-token CE (nats per token, padding = -100 excluded) and
    perplexity of the sub-network running the first ``k`` layers, then the final norm and the LM head.

    Args:
        ed: the ``ElasticDepth`` of ``stimulative.integrations.transformers.elastic_depth`` (one stage).
        batches: ``(batch, time)`` id tensors (``PackedBlocks`` batches); iterated once per depth, so pass a
            list or a re-iterable loader.
        depths: the depths to measure; default every depth 1..L.
    """
    if ed.num_stages != 1:
        raise ValueError(f"depth_losses is for single-stage models (LMs); this one has {ed.num_stages} stages")
    depths = list(range(1, ed.full_depths[0] + 1)) if depths is None else [int(k) for k in depths]
    model = TokenLogits(ed.model)
    was_training = ed.model.training
    ed.model.eval()
    out: dict[int, dict[str, float]] = {}
    try:
        for k in depths:
            total, count = 0.0, 0
            with ed.depth([k]):
                for ids in batches:
                    ids = ids.to(device) if device is not None else ids
                    y = next_token_targets(ids)
                    logits = model(ids)
                    total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                    count += y.numel()
            if count == 0:
                raise ValueError("no validation tokens")
            loss = total / count
            out[k] = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}
    finally:
        ed.model.train(was_training)
    return out
