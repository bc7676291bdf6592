"""Loafing by depth for LMs: the validation next-token loss of every prefix depth inside one model."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..core.exits import PrefixExits
from ..core.tokens import TokenLogits, next_token_targets

__all__ = ["depth_losses", "perplexity"]


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped so that a diverged loss gives a huge number instead of an ``OverflowError``."""
    return math.exp(min(loss, 700.0))


@torch.no_grad()
def depth_losses(ed, batches: Iterable[torch.Tensor], depths: Sequence[int] | None = None,
                 device: torch.device | str | None = None) -> dict[int, dict[str, float]]:
    """``{k: {"loss", "ppl", "agree", "tokens"}}``: mean next-token CE (nats per token, padding = -100 excluded),
    perplexity, and top-1 agreement with the full model (the fraction of positions where depth ``k``'s most likely
    next token is the full model's: what an early exit's drafts need) of the sub-network running the first ``k``
    layers, then the final norm and the LM head.

    Args:
        ed: the ``ElasticDepth`` of ``stimulative.hf.elastic_depth`` (one stage).
        batches: ``(batch, time)`` id tensors (``PackedBlocks`` batches); pass a list or a re-iterable loader.
            Every depth is read off one forward per batch (``PrefixExits``: the same numbers as a forward per
            depth) when the model's exits are exact, else each depth runs its own forwards.
        depths: the depths to measure; default every depth 1..L.
    """
    if ed.num_stages != 1:
        raise ValueError(f"depth_losses is for single-stage models (LMs); this one has {ed.num_stages} stages")
    depths = list(range(1, ed.full_depths[0] + 1)) if depths is None else [int(k) for k in depths]
    model = TokenLogits(ed.model)
    was_training = ed.model.training
    ed.model.eval()
    totals = {k: [0.0, 0, 0] for k in depths}  # loss sum, tokens, tokens agreeing with the full model
    try:
        exits = _one_forward_exits(ed, model, batches, device)
        with ed.depth(None):
            for ids in batches:
                ids = ids.to(device) if device is not None else ids
                y = next_token_targets(ids)
                keep = y != -100
                full_top = None
                for k, logits in _depth_logits(ed, model, exits, ids, depths):
                    if k is None:  # the full model's logits come first
                        full_top = logits.argmax(-1)
                        continue
                    totals[k][0] += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                    totals[k][1] += int(keep.sum())
                    totals[k][2] += int(((logits.argmax(-1) == full_top) & keep).sum())
    finally:
        ed.model.train(was_training)
    out: dict[int, dict[str, float]] = {}
    for k, (total, count, agree) in totals.items():
        if count == 0:
            raise ValueError("no validation tokens")
        loss = total / count
        out[k] = {"loss": loss, "ppl": perplexity(loss), "agree": agree / count, "tokens": count}
    return out


def _depth_logits(ed, model: TokenLogits, exits: PrefixExits | None, ids: torch.Tensor,
                  depths: Sequence[int]) -> Iterator[tuple[int | None, torch.Tensor]]:
    """``(None, the full model's logits)``, then ``(k, logits of depth k)`` for every depth: off one forward
    (``exits``; one prefix's logits in memory at a time besides the full model's), else a forward per depth."""
    if exits is not None:
        full, hidden, tail = exits.hidden_states(model, ids, depths)
        yield None, full
        for k in depths:
            yield k, full if k == exits.depth else tail(hidden[k])
        return
    full = model(ids)
    yield None, full
    for k in depths:
        if k >= ed.full_depths[0]:
            yield k, full
            continue
        with ed.depth([k]):
            logits = model(ids)
        yield k, logits


def _one_forward_exits(ed, model: TokenLogits, batches: Iterable[torch.Tensor], device) -> PrefixExits | None:
    """The model's prefix exits when they are exact (its final norm + head, checked once on the first batch),
    else None (separate forwards per depth)."""
    from ..hf import prefix_exits

    exits = prefix_exits(ed, rows=model.select_rows)
    if exits is None:
        return None
    first = next(iter(batches), None)
    if first is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed check only means separate forwards here
        ok = exits.matches(model, first.to(device) if device is not None else first)
    return exits if ok else None
