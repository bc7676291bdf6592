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

from .options import add_depth_selection, add_run_arguments

HELP = "mean logit L2 norm of sub-networks of every depth (the motivation for KL-)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_depth_selection(parser, "a seeded random sample of K configs (default: all "
                        "when the space has <= 64 configs, else 32)")


def run(args: argparse.Namespace) -> int:
    from ..analysis.logits import logits_analysis, logits_table, write_logits
    from ..runs import default_out_dir, open_runs, split_overrides
    from ..train.runtime import resolve_device

    runs = open_runs(args.inputs)
    _, overrides = split_overrides(args.inputs)
    result = logits_analysis(runs, depths=args.depths, all_configs=args.all, sample=args.sample, seed=args.seed,
                             bn_images=args.bn_recal, device=resolve_device(args.device), overrides=overrides,
                             progress=not args.no_progress)
    paths = write_logits(result, default_out_dir(runs, args.out))
    print(logits_table(result["by_blocks"]))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
