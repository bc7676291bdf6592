"""Effective receptive field (ERF, Luo et al. 2016, arXiv 1701.04128) of a network and its sub-networks.

The ERF of an output unit is the map of how strongly each input pixel influences it: the absolute gradient of
the unit with respect to the input. Following Luo et al. (and RepLKNet's visualisation used by ST++), the unit
is the centre spatial location of a feature map (summed over its channels), the feature map is the output of
the last residual stage before global pooling, and the map is averaged over test images.

The model runs in **eval mode**: BatchNorm uses its running statistics, so every image's gradient depends only
on that image and a whole batch can be differentiated at once. ST++ observes that shallow sub-networks have a
small ERF and that feeding them smaller inputs enlarges it relative to the image (the motivation for random
smaller sub-network inputs, "SITrans").

Example:
    >>> conv = torch.nn.Conv2d(3, 4, 5, padding=2)
    >>> heat = effective_receptive_field(conv, torch.randn(2, 3, 16, 16))
    >>> int((heat > 0).sum())   # exactly the 5x5 kernel footprint around the centre
    25
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.bn import recalibrated
from ..core.elastic import ElasticDepth, format_depths
from ..core.step import resize_input
from ..io import write_csv, write_json
from ..runs import Run, select_configs
from .plots import plot_erf

__all__ = ["effective_receptive_field", "erf_radius", "default_feature_layer", "resolve_layer", "erf_analysis",
           "write_erf", "parse_sizes", "COLUMNS"]

COLUMNS = ["run", "depths", "num_blocks", "size", "layer", "radius_px", "radius_frac", "mass"]


class _StopForward(Exception):
    """Raised by the feature hook: nothing after the feature map is needed."""


def default_feature_layer(ed: ElasticDepth) -> str:
    """Name of the module whose output is the ERF feature map: the last block of the last residual stage.

    When a sub-network skips that block, the (gated) block passes its input through, so its output is still
    the last stage's output.
    """
    return ed.stages[-1].block_names[-1]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module | None:
    """A module given by name (``"layer3"``, ``"layer3.2"``) or as a module; a clear error for a bad name."""
    if layer is None or isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        top = [n for n, _ in model.named_children()]
        raise ValueError(f"--layer {layer!r} is not a submodule of {type(model).__name__}; "
                         f"top-level modules are {top}") from None


def effective_receptive_field(model: nn.Module, images: torch.Tensor, layer: str | nn.Module | None = None,
                              batch_size: int = 32, size: int | None = None) -> np.ndarray:
    """Mean absolute input gradient of the centre unit of a feature map, summed over input channels.

    Args:
        model: the network (put in eval mode for the call, then restored).
        images: (N, C, H, W) input batch (already normalised).
        layer: module (or its name) whose output is the feature map; None: the model's own output, which must
            then be a (N, C, h, w) map (e.g. a plain conv stack).
        batch_size: images differentiated per backward pass.
        size: resize the images (bilinear, like SITrans) to ``size x size`` first; None keeps their size.

    Returns:
        (H, W) float64 array, averaged over the N images (not normalised).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    module = resolve_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        captured["features"] = output
        raise _StopForward

    handle = module.register_forward_hook(hook) if module is not None else None
    was_training = model.training
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    try:
        for chunk in images.split(batch_size):
            x = chunk.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                try:
                    features = model(x)
                except _StopForward:
                    features = captured.pop("features")
                if not isinstance(features, torch.Tensor) or features.ndim != 4:
                    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                    raise ValueError(f"the ERF needs a (N, C, h, w) feature map, got {shape}; "
                                     "name a convolutional module with --layer")
                h, w = features.shape[-2:]
                centre = features[:, :, h // 2, w // 2].sum()
                (grad,) = torch.autograd.grad(centre, x)
            total += grad.detach().abs().sum(dim=1).sum(dim=0).double().cpu()
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    return (total / images.shape[0]).numpy()


def erf_radius(heatmap: np.ndarray, mass: float = 0.9) -> dict:
    """Radius of the smallest disc around the heatmap's centre of mass that holds ``mass`` of its total.

    Args:
        heatmap: (H, W) non-negative map.
        mass: fraction of the total to enclose (0.9 = 90%).

    Returns:
        ``radius_px`` (pixels), ``radius_frac`` (radius / min(H, W)), ``centre`` ([row, col] of the centre of
        mass, pixels) and ``mass``.
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2 or (heat < 0).any():
        raise ValueError("the heatmap must be a non-negative 2-D array")
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    total = heat.sum()
    rows, cols = np.indices(heat.shape)
    if total <= 0:
        return {"radius_px": 0.0, "radius_frac": 0.0, "centre": [float("nan"), float("nan")], "mass": mass}
    cy, cx = float((rows * heat).sum() / total), float((cols * heat).sum() / total)
    dist = np.hypot(rows - cy, cols - cx).ravel()
    order = np.argsort(dist, kind="stable")
    cumulative = np.cumsum(heat.ravel()[order])
    index = int(np.searchsorted(cumulative, mass * total * (1 - 1e-12)))
    radius = float(dist[order][min(index, dist.size - 1)])
    return {"radius_px": radius, "radius_frac": radius / min(heat.shape), "centre": [cy, cx], "mass": mass}


# ------------------------------------------------------------------------------------------------------------
# The whole analysis of several runs
# ------------------------------------------------------------------------------------------------------------

def parse_sizes(text: str | None, input_size: int) -> list[int]:
    """``"32,24,16"`` -> ``[32, 24, 16]``; None: the data's size, 3/4 and 1/2 of it."""
    if text is None:
        return sorted({input_size, max(1, round(input_size * 0.75)), max(1, input_size // 2)}, reverse=True)
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers like 32,24,16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def _default_depths(ed: ElasticDepth) -> list[list[int]]:
    full, smallest = list(ed.full_depths), list(ed.min_depths)
    middle = [(m + c) // 2 for m, c in zip(smallest, full)]
    out = []
    for c in (full, middle, smallest):
        if c not in out:
            out.append(c)
    return out


def _test_images(batches, n: int) -> torch.Tensor:
    chunks, seen = [], 0
    for x, _ in batches:
        chunks.append(x[: n - seen])
        seen += chunks[-1].shape[0]
        if seen >= n:
            break
    if not chunks:
        raise ValueError("the test data is empty")
    return torch.cat(chunks)


def erf_analysis(runs: Sequence[Run], *, depths: Sequence[str] | None = None, sizes: str | None = None,
                 images: int = 64, layer: str | None = None, mass: float = 0.9, bn_images: int = 2000,
                 seed: int = 0, device: torch.device | str = "cpu", overrides: Sequence[str] = ()) -> dict:
    """ERF heatmaps and radii of every run, depth config (default: full, middle, smallest) and input size.

    With ``bn_images > 0`` BN statistics are re-estimated for each config and size on training images resized
    to that size (restored afterwards).

    Returns:
        ``{"entries", "settings"}`` (what ``write_erf`` writes as erf.json); an entry holds ``run, depths,
        num_blocks, size, layer, radius_px, radius_frac, centre, mass, heatmap``.
    """
    if images < 1:
        raise ValueError(f"--images must be >= 1, got {images}")
    if not 0 < mass <= 1:
        raise ValueError(f"--mass must be in (0, 1], got {mass}")
    torch.manual_seed(seed)
    entries = []
    for r in runs:
        ed = r.ed
        configs = select_configs(ed, depths, where=r.name) if depths else _default_depths(ed)
        layer_name = layer or default_feature_layer(ed)
        module = resolve_layer(r.model, layer_name)
        data = r.data(device)
        batch = _test_images(data.test, images).to(device)
        r.model.to(device)
        for config in configs:
            for size in parse_sizes(sizes, int(batch.shape[-1])):
                resized = ((resize_input(x, (size, size)), y) for x, y in data.train)
                with ed.depth(config), recalibrated(r.model, resized, bn_images, device=device):
                    heat = effective_receptive_field(r.model, batch, module, size=size)
                entries.append({"run": r.name, "depths": format_depths(config), "num_blocks": ed.num_blocks(config),
                                "size": size, "layer": layer_name, **erf_radius(heat, mass), "heatmap": heat.tolist()})
    settings = {"images": images, "mass": mass, "bn_recal_images": bn_images, "seed": seed,
                "overrides": list(overrides), "checkpoints": {r.name: str(r.path) for r in runs}, "mode": "eval"}
    return {"entries": entries, "settings": settings}


def write_erf(result: dict, out: str | Path) -> list[Path]:
    """erf.json, erf.csv and erf.png of an ``erf_analysis`` result."""
    out = Path(out)
    return [write_json(result, out / "erf.json"), write_csv(result["entries"], out / "erf.csv", COLUMNS),
            plot_erf(result["entries"], out / "erf.png")]
