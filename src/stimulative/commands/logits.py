"""Logit amplitude per sub-network depth: deeper sub-networks produce larger logits (why ST++ uses KL-).

For each checkpoint and each sub-network of the ordered space (all when small, else a seeded sample, or
--depths), computes the L2 norm of the logit vector of every test image and reports its mean and standard
deviation, grouped by the number of blocks the sub-network runs. BN statistics are re-estimated per
sub-network on --bn-recal training images first (as sub-networks normalise with their own batch statistics
during training); --bn-recal 0 uses the network's own statistics.

Writes logits.json, logits.csv and logits.png to --out.

examples:
  stimulative logits runs/ct runs/stpp data.test_subset=2000
  stimulative logits runs/stpp --depths 3,3,3 2,2,2 1,1,1 --bn-recal 0
"""

from __future__ import annotations

import argparse

import torch

from ..analysis.logits import norms_by_blocks, subnetwork_logit_norms
from ..analysis.plots import plot_logits, run_colors
from ..analysis.runs import (
    add_depth_selection,
    add_run_arguments,
    default_out_dir,
    load_runs,
    resolve_device,
    run_data,
    select_configs,
    split_overrides,
)
from ..analysis.tables import write_csv, write_json

HELP = "mean logit L2 norm of sub-networks of every depth (the motivation for KL-)"

COLUMNS = ["run", "depths", "num_blocks", "norm_mean", "norm_std", "std_mean", "acc", "n"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_depth_selection(parser, "a seeded random sample of K configs (default: all "
                        "when the space has <= 64 configs, else 32)")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    runs = load_runs(args.inputs)
    out = default_out_dir(runs, args.out)
    device = resolve_device(args.device)
    if args.bn_recal < 0:
        raise ValueError(f"--bn-recal must be >= 0, got {args.bn_recal}")
    rows: list[dict] = []
    for r in runs:
        configs = select_configs(r.ed, args.depths, args.all, args.sample, args.seed, where=r.name)
        data = run_data(r.config, device, r.loaded.num_classes)
        rows += subnetwork_logit_norms(r.ed, configs, data.test, data.train, args.bn_recal, run=r.name,
                                       device=device, progress=not args.no_progress)
    grouped = norms_by_blocks(rows)
    _, overrides = split_overrides(args.inputs)
    settings = {"bn_recal_images": args.bn_recal, "seed": args.seed, "overrides": overrides,
                "checkpoints": {r.name: str(r.path) for r in runs}}
    write_json({"rows": rows, "by_blocks": grouped, "settings": settings}, out / "logits.json")
    write_csv(rows, out / "logits.csv", COLUMNS)
    plot_logits(rows, out / "logits.png", colors=run_colors([r.name for r in runs]))
    print(f"{'run':<24} {'blocks':>6} {'configs':>7} {'mean |z|':>9} {'std |z|':>8} {'rel. full':>9}")
    for g in grouped:
        print(f"{g['run'][:24]:<24} {g['num_blocks']:>6} {g['configs']:>7} {g['norm_mean']:>9.3f} "
              f"{g['norm_std']:>8.3f} {g['relative']:>9.3f}")
    print(f"wrote {out / 'logits.json'}, {out / 'logits.csv'}, {out / 'logits.png'}")
    return 0
