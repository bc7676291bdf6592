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

A language-model run (task: lm) is exported as a transformers save_pretrained directory of its first --depth
layers (with its tokenizer and stimulative_lm.json; --evaluate adds the validation loss).

examples:
  stimulative export runs/lm_llama_st --depth 4 -o lm_st_d4
  stimulative export runs/r20_stpp/best.pt --depth 1,2,3 --format onnx -o r20_123.onnx data.root=cifar10.tar.xz
  stimulative export runs/r50/best.pt --format backbone -o r50_backbone.pth --bn-recal 0
"""

from __future__ import annotations

import argparse

from .options import add_bn_recal

HELP = "export a sub-network (pt, torchscript, onnx, safetensors, backbone)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..deploy.export import EXPORT_FORMATS

    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="change the checkpoint's config, e.g. data.root=/data/cifar10 data.train_subset=5000")
    parser.add_argument("--depth", default=None, metavar="D1,D2,...",
                        help="depth of every stage, e.g. 1,2,3 (default: the full network)")
    parser.add_argument("--format", default="pt", metavar="FORMAT",
                        help=f"one of {', '.join(EXPORT_FORMATS)} (default: pt)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output file")
    add_bn_recal(parser, "of the exported sub-network")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="input side for tracing/ONNX (default: the training config's image size)")
    parser.add_argument("--evaluate", action="store_true", help="also report test accuracy of the export")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")


def run(args: argparse.Namespace) -> int:
    from ..core.elastic import format_depths, parse_depths
    from ..deploy.export import check_format, export_run
    from ..lm.config import is_lm_run
    from ..runs import open_run

    if is_lm_run(args.checkpoint):  # a language model: a save_pretrained directory with --depth layers
        import json

        from ..lm.export import export_lm

        depth = None if args.depth is None else int(args.depth)
        print(json.dumps(export_lm(args.checkpoint, depth, args.output, evaluate=args.evaluate), indent=1))
        return 0
    fmt = check_format(args.format)
    depths = parse_depths(args.depth) if args.depth is not None else None
    run = open_run(args.checkpoint, args.overrides, use_ema=args.ema)
    if run.exported:
        raise ValueError(f"{args.checkpoint} is already an exported sub-network (depths {run.loaded.depths}); "
                         "export from the full training checkpoint")
    depths = list(depths) if depths is not None else run.ed.full_depths
    summary = export_run(run, depths, args.output, fmt, bn_images=args.bn_recal, input_size=args.input_size,
                         evaluate_test=args.evaluate, progress=True)
    acc = f", test accuracy {summary['accuracy']:.2f}%" if args.evaluate else ""
    diff = summary.get("max_abs_diff")
    check = f"; reload check ({summary['verified_with']}): max |diff| {diff:.2g}" if diff is not None else ""
    print(f"exported depths {format_depths(depths)} of {run.config.model.name} as {fmt} -> {args.output} "
          f"({summary['params']:,} params vs {summary['params_full']:,} full{acc}){check}")
    print(f"summary: {summary['summary']}")
    return 0
