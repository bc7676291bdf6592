"""One self-contained HTML report (plus report.md and PNGs) comparing training runs.

Shows the runs, their final accuracies, the config keys that differ, overlaid training curves, and the
loafing, logit and ERF analyses with captions explaining what each figure shows. Analyses are taken from
OUT/<analysis>.json or RUN_DIR/analysis/<analysis>.json when they exist; --loafing/--logits/--erf compute
them (for all runs together) into OUT first. key=value overrides apply to the runs' configs for those
computations (e.g. data.root=... data.test_subset=2000).

The HTML embeds every image as base64 PNG, so the single file can be mailed or opened offline.

examples:
  stimulative report runs/ct runs/stpp --out report --loafing --logits --erf data.test_subset=2000
  stimulative report runs/ct runs/stpp            # only what was already computed
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_bn_recal

HELP = "self-contained HTML report comparing runs (curves, accuracies, config diff, loafing, logits, ERF)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR [RUN_DIR ...]",
                        help="run directories (or checkpoints), followed by optional key=value overrides used "
                             "when computing analyses")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--title", default="Stimulative training report", help="page title")
    parser.add_argument("--loafing", action="store_true", help="compute the loafing analysis first")
    parser.add_argument("--logits", action="store_true", help="compute the logit-amplitude analysis first")
    parser.add_argument("--erf", action="store_true", help="compute the effective receptive fields first")
    add_bn_recal(parser, "per sub-network for --loafing/--logits/--erf")
    parser.add_argument("--sample", type=int, metavar="K", help="sub-networks per run for --loafing/--logits "
                        "(default: all when <= 64, else 32)")
    parser.add_argument("--erf-images", type=int, default=64, metavar="N", help="test images for --erf")
    parser.add_argument("--erf-sizes", default=None, metavar="S1,S2,..", help="input sizes for --erf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for computed analyses (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..analysis.report import ANALYSES, compute_analysis, find_analyses, read_runs, write_report
    from ..runs import open_runs, split_overrides
    from ..train.runtime import resolve_device

    paths, overrides = split_overrides(args.inputs)
    if not paths:
        raise ValueError("give at least one RUN_DIR")
    runs = read_runs(paths)
    out = Path(args.out).expanduser()
    kinds = [k for k in ANALYSES if getattr(args, k)]
    if kinds:
        opened = open_runs(args.inputs)
        for kind in kinds:
            print(f"computing {kind} of {', '.join(r.name for r in opened)} into {out}", flush=True)
            compute_analysis(kind, opened, out, bn_images=args.bn_recal, sample=args.sample, seed=args.seed,
                             device=resolve_device(args.device), erf_images=args.erf_images,
                             erf_sizes=args.erf_sizes, overrides=overrides, progress=not args.no_progress)
    analyses = find_analyses(runs, out)
    path = write_report(runs, out, analyses, title=args.title)
    included = ", ".join(k for k in ANALYSES if k in analyses) or "none"
    print(f"wrote {path} and {out / 'report.md'} ({len(runs)} runs; analyses: {included})")
    return 0
