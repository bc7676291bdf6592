"""Evaluate a checkpoint: top-1 accuracy and cross-entropy of the full network or of one sub-network.

CHECKPOINT is a .pt file or a run directory (best.pt, else last.pt). Exported sub-network checkpoints work
too (they carry their depths). key=value overrides apply to the checkpoint's config, e.g. to point at the
data on this machine.

examples:
  stimulative eval runs/cifar10_resnet20_stpp data.root=./cifar10
  stimulative eval runs/cifar10_resnet20_stpp/best.pt --depth 1,1,1 --bn-recal 2000 --json r20_111.json
  stimulative eval runs/cifar10_resnet20_stpp --ema
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "accuracy/loss of a checkpoint's full network or one sub-network (--depth)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint .pt file or run directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the checkpoint's config, e.g. data.root=./cifar10 data.test_subset=1000")
    parser.add_argument("--depth", metavar="D1,D2,..", help="evaluate this sub-network (blocks kept per stage)")
    parser.add_argument("--bn-recal", type=int, default=0, metavar="N",
                        help="re-estimate BatchNorm statistics on N training images first (0: off)")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=int, default=0, help="evaluation batch size (default: the config's)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def evaluate_checkpoint(checkpoint: str, depth: str | None = None, bn_recal: int = 0, ema: bool = False,
                        overrides: list[str] | None = None, device: str = "auto",
                        batch_size: int = 0) -> dict:
    """What ``stimulative eval`` computes, as a dict: acc, loss, n, depths, bn_recal, ema, checkpoint.

    Example:
        >>> evaluate_checkpoint("runs/demo/stpp", depth="1,1,1", bn_recal=500)   # doctest: +SKIP
        {'checkpoint': 'runs/demo/stpp', 'depths': [1, 1, 1], 'acc': 91.2, ...}
    """
    from ..core.bn import recalibrate_bn
    from ..core.elastic import parse_depths
    from ..core.evaluation import evaluate, evaluate_depth
    from ..data import build_data
    from ..train.checkpoint import load_model
    from ..train.config import apply_overrides, config_from_dict, config_to_dict
    from ..train.runtime import resolve_device

    if bn_recal < 0:
        raise ValueError(f"--bn-recal must be >= 0, got {bn_recal}")
    loaded = load_model(checkpoint, use_ema=ema)
    if ema and loaded.checkpoint.get("ema") is None:
        raise ValueError(f"checkpoint {checkpoint!r} has no EMA weights (train with ema=0.999 to get them)")
    cfg = config_from_dict(apply_overrides(config_to_dict(loaded.config), list(overrides or [])))
    dev = resolve_device(device)
    bundle = build_data(cfg.data, cfg.batch_size, batch_size or cfg.eval_batch_size, seed=cfg.seed, device=dev)
    if bundle.num_classes != loaded.num_classes:
        raise ValueError(f"the checkpoint has {loaded.num_classes} classes but data {cfg.data.name!r} has "
                         f"{bundle.num_classes}; check data.* overrides")
    depths = parse_depths(depth) if depth else None
    model = loaded.model.to(dev)
    if loaded.ed is None:  # an exported sub-network: its depths are fixed
        if depths is not None and list(depths) != list(loaded.depths):
            raise ValueError(f"{checkpoint!r} is an exported sub-network with depths {loaded.depths}; "
                             f"--depth {depth} is not available in it")
        if bn_recal:
            recalibrate_bn(model, bundle.train, bn_recal, device=dev)
        result = evaluate(model, bundle.test, device=dev)
        depths = list(loaded.depths)
    else:
        result = evaluate_depth(loaded.ed, depths, bundle.test, bundle.train, bn_recal, device=dev)
        depths = list(depths) if depths is not None else loaded.ed.full_depths
    return {"checkpoint": str(checkpoint), "depths": depths, "full_network": loaded.ed is not None
            and depths == loaded.ed.full_depths, "acc": result["acc"], "loss": result["loss"],
            "n": int(result["n"]), "bn_recal": bn_recal, "ema": ema}


def run(args: argparse.Namespace) -> int:
    r = evaluate_checkpoint(args.checkpoint, args.depth, args.bn_recal, args.ema, args.overrides, args.device,
                            args.batch_size)
    what = "full network" if r["full_network"] else "sub-network"
    extra = f", BN re-estimated on {r['bn_recal']} train images" if r["bn_recal"] else ""
    extra += ", EMA weights" if r["ema"] else ""
    print(f"{r['checkpoint']}: {what} {','.join(map(str, r['depths']))}: top-1 {r['acc']:.2f}% "
          f"loss {r['loss']:.4f} on {r['n']} test images{extra}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0
