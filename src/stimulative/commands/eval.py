"""Evaluate a checkpoint: top-1 accuracy and cross-entropy of the full network or of one sub-network.

CHECKPOINT is a .pt file or a run directory (best.pt, else last.pt). Exported sub-network checkpoints work
too (they carry their depths). key=value overrides apply to the checkpoint's config, e.g. to point at the
data on this machine.

examples:
  stimulative eval runs/cifar10_resnet20_stpp data.root=./cifar10
  stimulative eval runs/cifar10_resnet20_stpp/best.pt --depth 1,1,1 --json r20_111.json
  stimulative eval runs/cifar10_resnet20_stpp --ema --bn-recal 0
"""

from __future__ import annotations

import argparse

from .options import add_bn_recal

HELP = "accuracy/loss of a checkpoint's full network or one sub-network (--depth)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint .pt file or run directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the checkpoint's config, e.g. data.root=./cifar10 data.test_subset=1000")
    parser.add_argument("--depth", metavar="D1,D2,..", help="evaluate this sub-network (blocks kept per stage)")
    add_bn_recal(parser, "of the evaluated network")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=int, default=0, help="evaluation batch size (default: the config's)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..core.elastic import format_depths
    from ..io import write_json
    from ..runs import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, args.depth, args.bn_recal, args.ema, args.overrides, args.device,
                            args.batch_size)
    what = "full network" if r["full_network"] else "sub-network"
    extra = f", BN re-estimated on {r['bn_recal']} train images" if r["bn_recal"] else ""
    extra += ", EMA weights" if r["ema"] else ""
    print(f"{r['checkpoint']}: {what} {format_depths(r['depths'])}: top-1 {r['acc']:.2f}% "
          f"loss {r['loss']:.4f} on {r['n']} test images{extra}")
    if args.json:
        write_json(r, args.json, indent=2)
    return 0
