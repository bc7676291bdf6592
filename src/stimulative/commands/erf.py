"""Effective receptive field (Luo et al. 2016) of a network and its sub-networks at several input sizes.

For each checkpoint, depth config (--depths; default: full, middle and smallest net) and input size (--sizes;
test images resized bilinearly, as ST++ does for sub-network inputs), computes the absolute gradient of the
centre unit of the last residual stage's feature map (summed over channels, before global pooling; --layer
names another module) with respect to the input, summed over input channels and averaged over --images test
images. The model runs in eval mode (BatchNorm uses its running statistics, re-estimated per depth and size on
--bn-recal training images resized to that size), so each image's gradient depends only on that image.
Reports the radius around the map's centre of mass that holds 90% of the gradient mass, in pixels and as a
fraction of the input size.

Writes erf.json (heatmaps + radii), erf.csv (radii) and erf.png (heatmap grid) to --out.

examples:
  stimulative erf runs/stpp --sizes 32,24,16 --images 64
  stimulative erf runs/ct runs/stpp --depths 3,3,3 1,1,1 data.root=/data/cifar10
"""

from __future__ import annotations

import argparse

from .options import add_bn_recal, add_run_arguments

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
    add_bn_recal(parser, "per sub-network and input size")


def run(args: argparse.Namespace) -> int:
    from ..analysis.erf import erf_analysis, write_erf
    from ..runs import default_out_dir, open_runs, split_overrides
    from ..train.runtime import resolve_device

    runs = open_runs(args.inputs)
    _, overrides = split_overrides(args.inputs)
    result = erf_analysis(runs, depths=args.depths, sizes=args.sizes, images=args.images, layer=args.layer,
                          mass=args.mass, bn_images=args.bn_recal, seed=args.seed,
                          device=resolve_device(args.device), overrides=overrides)
    for e in result["entries"]:
        print(f"{e['run']}  depths {e['depths']:<10} {e['size']:>3}x{e['size']:<3} px: r{round(100 * args.mass)} "
              f"= {e['radius_px']:.2f} px ({100 * e['radius_frac']:.1f}% of the input)")
    paths = write_erf(result, default_out_dir(runs, args.out))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
