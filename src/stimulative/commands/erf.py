"""Effective receptive field (Luo et al. 2016) of a network and its sub-networks at several input sizes.

For each checkpoint, depth config (--depths; default: full, middle and smallest net) and input size (--sizes;
test images resized bilinearly, as ST++ does for sub-network inputs), computes the absolute gradient of the
centre unit of the last residual stage's feature map (summed over channels, before global pooling; --layer
names another module) with respect to the input, summed over input channels and averaged over --images test
images. The model runs in eval mode (BatchNorm uses its running statistics), so each image's gradient
depends only on that image. Reports the radius around the map's centre of mass that holds 90% of the gradient
mass, in pixels and as a fraction of the input size.

Writes erf.json (heatmaps + radii), erf.csv (radii) and erf.png (heatmap grid) to --out.

examples:
  stimulative erf runs/stpp --sizes 32,24,16 --images 64
  stimulative erf runs/ct runs/stpp --depths 3,3,3 1,1,1 data.root=/data/cifar10
"""

from __future__ import annotations

import argparse

import torch

from ..analysis.erf import default_feature_layer, effective_receptive_field, erf_radius, resolve_layer
from ..analysis.plots import plot_erf
from ..analysis.runs import (
    add_run_arguments,
    default_out_dir,
    format_depths,
    load_runs,
    resolve_device,
    run_data,
    select_configs,
    split_overrides,
)
from ..analysis.tables import write_csv, write_json
from ..core.bn import recalibrate_bn
from ..core.step import resize_input

HELP = "effective receptive field of sub-networks at several input sizes (the motivation for smaller inputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--sizes", default=None, metavar="S1,S2,..",
                        help="input sizes in pixels, e.g. 32,24,16 (default: the data's size, 3/4 and 1/2 of it)")
    parser.add_argument("--depths", nargs="+", metavar="D1,D2,..",
                        help="depth configs (default: the full, a middle and the smallest network)")
    parser.add_argument("--images", type=int, default=64, metavar="N", help="test images to average over")
    parser.add_argument("--layer", default=None, help="module whose output is the feature map (default: the last "
                        "block of the last residual stage)")
    parser.add_argument("--mass", type=float, default=0.9, help="fraction of gradient mass inside the radius")
    parser.add_argument("--bn-recal", type=int, default=0, metavar="N",
                        help="re-estimate BN statistics per sub-network and size on N training images "
                             "(default 0: the checkpoint's statistics)")


def _sizes(text: str | None, input_size: int) -> list[int]:
    if text is None:
        return sorted({input_size, max(1, round(input_size * 0.75)), max(1, input_size // 2)}, reverse=True)
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers like 32,24,16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def _default_depths(ed) -> list[list[int]]:
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


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    if not 0 < args.mass <= 1:
        raise ValueError(f"--mass must be in (0, 1], got {args.mass}")
    runs = load_runs(args.inputs)
    out = default_out_dir(runs, args.out)
    device = resolve_device(args.device)
    entries = []
    for r in runs:
        ed = r.ed
        configs = select_configs(ed, args.depths, where=r.name) if args.depths else _default_depths(ed)
        layer_name = args.layer or default_feature_layer(ed)
        layer = resolve_layer(r.model, layer_name)
        data = run_data(r.config, device, r.loaded.num_classes)
        images = _test_images(data.test, args.images).to(device)
        r.model.to(device)
        sizes = _sizes(args.sizes, int(images.shape[-1]))
        for config in configs:
            for size in sizes:
                saved = {k: v.clone() for k, v in r.model.state_dict().items()
                         if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
                try:
                    with ed.depth(config):
                        if args.bn_recal > 0:
                            recalibrate_bn(r.model, ((resize_input(x, (size, size)), y) for x, y in data.train),
                                           args.bn_recal, device=device)
                        heat = effective_receptive_field(r.model, images, layer, size=size)
                finally:
                    r.model.load_state_dict(saved, strict=False)
                radius = erf_radius(heat, args.mass)
                entries.append({"run": r.name, "depths": format_depths(config), "num_blocks": ed.num_blocks(config),
                                "size": size, "layer": layer_name, **radius, "heatmap": heat.tolist()})
                print(f"{r.name}  depths {format_depths(config):<10} {size:>3}x{size:<3} px: r{round(100 * args.mass)} "
                      f"= {radius['radius_px']:.2f} px ({100 * radius['radius_frac']:.1f}% of the input)")
    _, overrides = split_overrides(args.inputs)
    settings = {"images": args.images, "mass": args.mass, "bn_recal_images": args.bn_recal, "seed": args.seed,
                "overrides": overrides, "checkpoints": {r.name: str(r.path) for r in runs}, "mode": "eval"}
    write_json({"entries": entries, "settings": settings}, out / "erf.json")
    write_csv(entries, out / "erf.csv", ["run", "depths", "num_blocks", "size", "layer", "radius_px", "radius_frac",
                                         "mass"])
    plot_erf(entries, out / "erf.png")
    print(f"wrote {out / 'erf.json'}, {out / 'erf.csv'}, {out / 'erf.png'}")
    return 0
