"""Stochastic depth and LayerDrop on the residual blocks that ``ElasticDepth`` found.

The peers of stimulative training: per sample, a block's residual branch is dropped with probability ``p_l``
during training (the sample goes through the identity path) and scaled by ``1 / (1 - p_l)`` when kept. In a
post-activation ResNet block (``relu(x + f(x))``) the drop acts on ``f(x)`` before the addition, through a forward
hook on the branch's last module (``branch_end``), as Huang et al. and timm's ResNets do; in a block whose output
is ``x + f(x)`` (ViT, ConvNeXt, MobileNet, LM layers) on the increment ``block(x) - x``. The scaling of kept
samples (``scale_by_keep``; LayerSkip does not rescale) keeps the eval-mode network the plain one. The drop itself
is timm's ``timm.layers.drop_path`` (per sample; the same draws as ``torchvision.ops.stochastic_depth(...,
mode="row")``); this module only chooses the rates.

Two modes (``mode=``):

* ``sample`` -- every sample draws its own keep/drop per block (timm's and torchvision's ``row`` form). A
  dropped block is still computed for the samples that keep it, so this saves no compute;
* ``batch`` -- one draw per block per forward for the whole mini-batch, as Huang et al. train stochastic depth
  and Fan et al. LayerDrop: a dropped block is skipped (no forward, so no backward, and its parameters get no
  gradient in that step), which makes an epoch cheaper by about the expected fraction of dropped blocks. A kept
  block's residual is scaled by ``1 / (1 - p_l)`` (``scale_by_keep``), so that eval mode is the plain network.
  Skipping a post-activation block returns its input, which equals ``relu(x + 0)`` because the input is itself
  the output of a ReLU (as ``ElasticDepth``'s skip assumes). The draws come from torch's global generator on
  the CPU: seeded runs repeat.

``removable_only=True`` spreads the schedule over the blocks that some sub-network removes (those beyond each
stage's ``ElasticDepth.min_depths``: for a CIFAR ResNet-20 the last two blocks of every stage) and never drops
the others, so the peers train the same sub-networks ST evaluates.

Schedules over the ``L`` blocks of the elastic stages in network order (block ``l = 1..L``):

* ``linear`` -- stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382): ``p_l = p * l / L``,
  rising to ``p`` at the last block (the paper's ``p_L = 0.5``);
* ``uniform`` -- LayerDrop (Fan et al. 2019, https://arxiv.org/abs/1909.11556): ``p_l = p`` for every block
  (the paper's ``p = 0.2``);
* ``exponential`` -- LayerSkip's depth curve (Elhoushi et al. 2024, https://arxiv.org/abs/2404.16710):
  ``p_l = p * (exp((l - 1) * ln 2 / (L - 1)) - 1)``, 0 at the first block and ``p`` at the last.

Blocks that cannot be skipped (they change shape) keep their place in the count but are never dropped.
BatchNorm re-estimation (``recalibrate_bn``) runs in train mode and pauses the drops (``drop_path_paused``).

Example:
    >>> import torch, stimulative as st
    >>> from stimulative.core.droppath import set_drop_path
    >>> model = st.create_model("cifar_resnet20", num_classes=10)
    >>> ed = st.ElasticDepth(model)
    >>> rates = set_drop_path(ed, 0.5, "linear")       # stochastic depth with p_L = 0.5
    >>> [round(r, 3) for r in rates][:3]
    [0.056, 0.111, 0.167]
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from timm.layers import drop_path
from torch import nn

__all__ = ["DROP_PATH_SCHEDULES", "DROP_PATH_MODES", "drop_path_rates", "set_drop_path", "drop_path_paused",
           "drop_residual", "batch_dropped", "branch_end", "clear_drop_path"]

DROP_PATH_SCHEDULES = ("linear", "uniform", "exponential")
DROP_PATH_MODES = ("sample", "batch")
_KEYS = ("_st_drop", "_st_drop_scale", "_st_drop_mode", "_st_drop_batch", "_st_drop_hooked", "_st_drop_owner")


def drop_path_rates(num_blocks: int, p: float, schedule: str = "linear") -> list[float]:
    """The drop probability of each of ``num_blocks`` blocks in network order (see the module docstring).

    Args:
        num_blocks: number of blocks ``L``.
        p: the largest rate (``linear``/``exponential``: the last block's; ``uniform``: every block's), in [0, 1).
        schedule: ``linear`` (stochastic depth), ``uniform`` (LayerDrop) or ``exponential`` (LayerSkip).
    """
    if schedule not in DROP_PATH_SCHEDULES:
        raise ValueError(f"drop-path schedule {schedule!r} is not one of {', '.join(DROP_PATH_SCHEDULES)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
    n = int(num_blocks)
    if schedule == "uniform":
        return [float(p)] * n
    if schedule == "linear":
        return [p * (i + 1) / n for i in range(n)]
    if n == 1:
        return [float(p)]
    return [p * (math.exp(i * math.log(2) / (n - 1)) - 1.0) for i in range(n)]


def _blocks(ed, removable_only: bool = False) -> list[tuple[nn.Module, bool]]:
    """Every block of ``ed``'s stages in network order, with whether it may be dropped (skippable, and with
    ``removable_only`` also beyond its stage's minimum depth)."""
    out = []
    for stage, low in zip(ed.stages, ed.min_depths):
        for i, (b, flag) in enumerate(zip(stage.blocks, stage.skippable)):
            out.append((b, bool(flag) and (not removable_only or i >= low)))
    return out


def branch_end(block: nn.Module) -> nn.Module | None:
    """The module whose output ends the residual branch of a post-activation ResNet block (``relu(x + f(x))``:
    torchvision, timm, HF and our CIFAR ResNets), where the drop must act so that a kept sample gets
    ``relu(x + f(x) / (1 - p))`` as in Huang et al.; None for blocks whose output is ``x + f(x)`` (ViT, ConvNeXt,
    MobileNet, LM layers), where dropping the increment ``block(x) - x`` is the same thing."""
    if isinstance(getattr(block, "se", None), nn.Module) and hasattr(block, "conv1"):  # timm: bn -> se -> add
        return block.se
    if hasattr(block, "conv1") and hasattr(block, "downsample"):
        for name in ("bn3", "bn2"):
            if isinstance(getattr(block, name, None), nn.Module):
                return getattr(block, name)
    layer = getattr(block, "layer", None)  # transformers ResNet: shortcut + layer, activation after the add
    if hasattr(block, "shortcut") and hasattr(block, "activation") and isinstance(layer, nn.Sequential):
        return layer[-1]
    return None


def _drop(module: nn.Module, branch: torch.Tensor, p: float) -> torch.Tensor:
    """The residual branch after the drop: per sample (``sample`` mode), or only the keep scaling (``batch``
    mode: the block was not skipped, so it is kept for the whole batch)."""
    scale = module.__dict__.get("_st_drop_scale", True)
    if module.__dict__.get("_st_drop_mode", "sample") == "batch":
        return branch / (1.0 - p) if scale else branch
    return drop_path(branch, p, True, scale)


def _drop_branch_hook(module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
    """Forward hook on a branch end: drop its output per sample (a module-level function, so that a deep copy
    of the model, e.g. an EMA, reads its own copy's rate)."""
    p = module.__dict__.get("_st_drop", 0.0)
    owner = module.__dict__.get("_st_drop_owner", module)  # the block's mode counts (a frozen BN is in eval)
    if not p or not owner.training:
        return out
    return _drop(module, out, p)


def set_drop_path(ed, p: float, schedule: str = "linear", rates: Sequence[float] | None = None,
                  scale_by_keep: bool = True, mode: str = "sample", removable_only: bool = False) -> list[float]:
    """Set the drop rate of every skippable block of an ``ElasticDepth`` (``p = 0`` turns it off).

    Args:
        ed: the model's ``ElasticDepth`` (its stages give the blocks and their order).
        p: the schedule's largest rate.
        schedule: ``linear``, ``uniform`` or ``exponential``.
        rates: explicit per-block rates instead of ``p``/``schedule`` (one per block of ``ed``'s stages).
        scale_by_keep: scale a kept residual by ``1 / (1 - rate)`` (stochastic depth, LayerDrop as timm and
            torchvision do); False keeps it as it is (LayerSkip's layer dropout).
        mode: ``sample`` (a draw per sample; nothing is skipped) or ``batch`` (a draw per block per forward for
            the whole batch; a dropped block is not computed).
        removable_only: the schedule runs over the blocks beyond every stage's minimum depth only (the ones some
            sub-network removes); the others are never dropped. With ``rates``, one rate per such block.

    Returns:
        The rate of every block in network order (0 for blocks that are never dropped).
    """
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"drop-path mode {mode!r} is not one of {', '.join(DROP_PATH_MODES)}")
    blocks = _blocks(ed, removable_only)
    if removable_only:  # the schedule's block count is that of the droppable blocks; the others get 0
        droppable = sum(flag for _, flag in blocks)
        own = iter(drop_path_rates(droppable, p, schedule) if rates is None else rates)
        if rates is not None and len(rates) != droppable:
            raise ValueError(f"rates has {len(rates)} entries but the model has {droppable} removable blocks")
        rates = [next(own) if flag else 0.0 for _, flag in blocks]
    elif rates is None:
        rates = drop_path_rates(len(blocks), p, schedule)
    elif len(rates) != len(blocks):
        raise ValueError(f"rates has {len(rates)} entries but the model has {len(blocks)} blocks")
    elif not all(0.0 <= float(r) < 1.0 for r in rates):
        raise ValueError(f"every drop-path rate must be in [0, 1), got {list(rates)}")
    out = []
    for (block, flag), r in zip(blocks, rates):
        r = float(r) if flag else 0.0
        end = branch_end(block) if flag else None
        target = block if end is None else end
        if end is not None and not end.__dict__.get("_st_drop_hooked"):
            end.register_forward_hook(_drop_branch_hook)
            end._st_drop_hooked = True
            end.__dict__["_st_drop_owner"] = block  # not a submodule: a plain reference (deepcopy maps it)
        if end is None and flag and r and hasattr(block, "conv1") and hasattr(block, "downsample"):
            warnings.warn(f"{type(block).__name__}: the end of its residual branch was not found; its increment "
                          "block(x) - x is dropped instead (exact only when the block has no activation after "
                          "the addition)", stacklevel=2)
        target._st_drop = r
        target._st_drop_scale = bool(scale_by_keep)
        target._st_drop_mode = mode
        block.__dict__.pop("_st_drop_batch", None)
        if mode == "batch" and r:  # the gated forward skips the block on this draw (batch_dropped)
            block._st_drop_batch = r
        out.append(r)
    return out


def clear_drop_path(model: nn.Module) -> None:
    """Remove every drop-path attribute and branch hook from ``model``'s modules (``ElasticDepth.extract`` and
    ``remove`` call it)."""
    for m in model.modules():
        for name in _KEYS:
            m.__dict__.pop(name, None)
        for key in [k for k, fn in m._forward_hooks.items() if fn is _drop_branch_hook]:
            del m._forward_hooks[key]


@contextlib.contextmanager
def drop_path_paused(model: nn.Module) -> Iterator[None]:
    """Inside, no block of ``model`` drops its residual (BatchNorm re-estimation runs in train mode)."""
    saved = [(m, k, m.__dict__[k]) for m in model.modules() for k in ("_st_drop", "_st_drop_batch")
             if m.__dict__.get(k)]
    for m, k, _ in saved:
        m.__dict__[k] = 0.0
    try:
        yield
    finally:
        for m, k, r in saved:
            m.__dict__[k] = r


def batch_dropped(block: nn.Module) -> bool:
    """Whether a block in ``batch`` mode is dropped for this forward (one draw for the whole batch; training
    only). The gated forwards then return the block's input without computing it."""
    p = block.__dict__.get("_st_drop_batch", 0.0)
    return bool(p) and block.training and bool(torch.rand(()) < p)


def drop_residual(block: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` with the block's residual increment dropped per sample at the block's rate (training only)."""
    p = block.__dict__.get("_st_drop", 0.0)
    if not p or not block.training:  # blocks with a branch end carry no rate: their hook drops
        return out
    return x + _drop(block, out - x, p)
