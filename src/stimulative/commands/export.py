"""Export a sub-network of a trained checkpoint as a standalone model (skipped blocks removed).

The sub-network's BatchNorm statistics are re-estimated for its depth on --bn-recal training images (default
2000; 0 keeps the trained statistics), then it is written in the chosen format and reloaded to check that it
reproduces the in-library sub-network's outputs. A JSON summary (params, depths, accuracy with --evaluate) is
written next to it as OUT.summary.json.

formats:
  pt           our checkpoint with "depths" (stimulative eval / load_model); its "model" entry is a plain
               state_dict that loads strictly into the torchvision/timm architecture built with fewer blocks
  torchscript  torch.jit.trace graph (torch.jit.load)
  onnx         opset 17, dynamic batch axis, input "input", output "logits" (checked with onnxruntime)
  safetensors  state_dict + OUT.json sidecar (model, depths, num_classes, input size, how to build it)
  backbone     plain state_dict without the classifier head (torchvision ResNet keys minus fc.*)

examples:
  stimulative export runs/r20_stpp/best.pt --depth 1,2,3 --format onnx -o r20_123.onnx data.root=cifar10.tar.xz
  stimulative export runs/r50/best.pt --format backbone -o r50_backbone.pth --bn-recal 0
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "export a sub-network (pt, torchscript, onnx, safetensors, backbone)"

__all__ = ["HELP", "add_arguments", "run", "load_for_command", "input_size_of",
           "export_from_loaded", "check_classes"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..export import EXPORT_FORMATS

    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="change the checkpoint's config, e.g. data.root=/data/cifar10 data.train_subset=5000")
    parser.add_argument("--depth", default=None, metavar="D1,D2,...",
                        help="depth of every stage, e.g. 1,2,3 (default: the full network)")
    parser.add_argument("--format", default="pt", metavar="FORMAT",
                        help=f"one of {', '.join(EXPORT_FORMATS)} (default: pt)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output file")
    parser.add_argument("--bn-recal", type=int, default=2000, metavar="N",
                        help="re-estimate BatchNorm statistics on N training images (default 2000; 0 to skip)")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="input side for tracing/ONNX (default: the training config's image size)")
    parser.add_argument("--evaluate", action="store_true", help="also report test accuracy of the export")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")


def input_size_of(cfg) -> int:
    """The square input side the model is evaluated at (center crop when the config sets one)."""
    return int(cfg.data.val_crop or cfg.data.input_size)


def load_for_command(path: str, overrides: list[str], use_ema: bool = False):
    """``load_model(path)`` with ``key=value`` overrides applied to its config. Returns (loaded, cfg)."""
    from ..train.checkpoint import load_model
    from ..train.config import apply_overrides, config_from_dict, config_to_dict

    loaded = load_model(path, use_ema=use_ema)
    cfg = loaded.config
    if overrides:
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), list(overrides)))
    return loaded, cfg


def check_classes(bundle, loaded, cfg) -> None:
    """Refuse data whose number of classes differs from the checkpoint's (wrong data.* override)."""
    if bundle.num_classes != loaded.num_classes:
        raise ValueError(f"the checkpoint has {loaded.num_classes} classes but data {cfg.data.name!r} has "
                         f"{bundle.num_classes}; check the data.* overrides")


def _mean_std(cfg, bundle=None) -> tuple[list[float], list[float]]:
    test = getattr(bundle, "test", None)
    if test is not None and hasattr(test, "mean") and hasattr(test, "std"):
        return [round(float(v), 6) for v in test.mean.flatten()], [round(float(v), 6) for v in test.std.flatten()]
    from ..data import DATASET_STATS

    mean, std = DATASET_STATS.get(cfg.data.name, DATASET_STATS["default"])
    return list(cfg.data.mean or mean), list(cfg.data.std or std)


def export_from_loaded(loaded, cfg, sub, depths: list[int], output: str | Path, fmt: str, *,
                       input_size: int, bn_images: int, checkpoint: str, bundle=None,
                       metrics: dict | None = None) -> dict[str, Any]:
    """Write ``sub`` (extracted from ``loaded``) in ``fmt`` and its summary JSON; returns the summary."""
    from ..export import count_parameters, export_model, write_json
    from ..train.config import config_to_dict

    mean, std = _mean_std(cfg, bundle)
    extra = {"epoch": loaded.checkpoint.get("epoch"), "step": loaded.checkpoint.get("step"),
             "metrics": dict(metrics or {}), "best_acc": (metrics or {}).get("acc", loaded.checkpoint.get("best_acc")),
             "source_checkpoint": str(checkpoint), "bn_recal_images": bn_images, "mean": mean, "std": std}
    info = export_model(sub, output, fmt, model_name=cfg.model.name, num_classes=loaded.num_classes,
                        depths=depths, input_size=input_size, config=config_to_dict(cfg), extra=extra)
    summary = {"checkpoint": str(checkpoint), "output": str(output), "model": cfg.model.name, "depths": depths,
               "full_depths": loaded.ed.full_depths, "num_classes": loaded.num_classes,
               "blocks": loaded.ed.num_blocks(depths), "blocks_full": loaded.ed.num_blocks(),
               "params_full": count_parameters(loaded.model), "input_size": input_size,
               "bn_recal_images": bn_images, "mean": mean, "std": std, **info}
    if metrics:
        summary["accuracy"] = metrics.get("acc")
        summary["test_loss"] = metrics.get("loss")
        summary["test_images"] = metrics.get("n")
    summary_path = Path(output).with_name(Path(output).name + ".summary.json")
    summary["summary"] = str(summary_path)
    write_json(summary, summary_path)
    return summary


def run(args: argparse.Namespace) -> int:
    from ..core.elastic import parse_depths
    from ..core.evaluation import evaluate
    from ..data import build_data
    from ..export import check_format, extract_subnetwork

    fmt = check_format(args.format)
    depths = parse_depths(args.depth) if args.depth is not None else None
    if args.bn_recal < 0:
        raise ValueError(f"--bn-recal must be >= 0, got {args.bn_recal}")
    loaded, cfg = load_for_command(args.checkpoint, args.overrides, args.ema)
    if loaded.ed is None:
        raise ValueError(f"{args.checkpoint} is already an exported sub-network (depths {loaded.depths}); "
                         "export from the full training checkpoint")
    depths = list(depths) if depths is not None else loaded.ed.full_depths
    loaded.ed.block_modes(depths)  # validate before any data is loaded
    bundle = None
    if args.bn_recal > 0 or args.evaluate:
        bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed, device="cpu")
        check_classes(bundle, loaded, cfg)
        bundle.train.set_epoch(0)
    sub = extract_subnetwork(loaded.ed, depths, bundle.train if bundle else None, args.bn_recal, progress=True)
    metrics = evaluate(sub, bundle.test, progress=True) if args.evaluate else None
    input_size = args.input_size or input_size_of(cfg)
    summary = export_from_loaded(loaded, cfg, sub, depths, args.output, fmt, input_size=input_size,
                                 bn_images=args.bn_recal, checkpoint=args.checkpoint, bundle=bundle, metrics=metrics)
    acc = f", test accuracy {summary['accuracy']:.2f}%" if metrics else ""
    diff = summary.get("max_abs_diff")
    check = f"; reload check ({summary['verified_with']}): max |diff| {diff:.2g}" if diff is not None else ""
    print(f"exported depths {','.join(map(str, depths))} of {cfg.model.name} as {fmt} -> {args.output} "
          f"({summary['params']:,} params vs {summary['params_full']:,} full{acc}){check}")
    print(f"summary: {summary['summary']}")
    return 0
