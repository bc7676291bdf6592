"""Network loafing: accuracy of every sub-network inside trained networks (and trained alone).

For each checkpoint, evaluates the sub-networks of the ordered sample space (keep the first d_i blocks of
stage i) on the test set, once with the network's own BatchNorm statistics and once with statistics
re-estimated for that sub-network on --bn-recal training images. Networks of the same family trained alone
(--individual, matched by their depths: a ResNet-20 is the 3,3,3 sub-network of a ResNet-56) show the
"inside the ensemble vs alone" gap of the paper.

Writes loafing.json (rows, per-run summary, settings), loafing.csv and loafing.png to --out.

examples:
  stimulative loafing runs/ct runs/stpp data.test_subset=2000
  stimulative loafing runs/ct56 --depths 3,3,3 5,5,5 --individual runs/resnet20 runs/resnet32
  stimulative loafing runs/ct56 --sample 16 --bn-recal 0
"""

from __future__ import annotations

import argparse

from .options import add_depth_selection, add_run_arguments

HELP = "accuracy of every sub-network inside trained networks vs trained alone (network loafing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_depth_selection(parser, "a seeded random sample of K configs (always with "
                        "the full and smallest net); default: all when the space has <= 64 configs, else 32")
    parser.add_argument("--individual", nargs="+", default=[], metavar="RUN",
                        help="checkpoints/run dirs of the same sub-network architectures trained alone")
    parser.add_argument("--train-individual", metavar="RECIPE",
                        help="first train the individual baselines with this recipe (one run per "
                             "--individual-depths config, written to OUT/individual; finished runs are reused)")
    parser.add_argument("--individual-depths", nargs="+", metavar="D1,D2,..",
                        help="configs to train alone with --train-individual (default: the smallest net)")
    parser.add_argument("--train-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for --train-individual runs, e.g. epochs=5 data.train_subset=5000")


def run(args: argparse.Namespace) -> int:
    from ..analysis.individual import train_individuals
    from ..analysis.loafing import loafing_analysis, loafing_table, write_loafing
    from ..core.elastic import format_depths
    from ..lm.cli import is_lm_run
    from ..runs import default_out_dir, open_run, open_runs, select_configs, split_overrides, unique_names
    from ..train.runtime import resolve_device

    lm_inputs = [p for p in args.inputs if "=" not in p]
    if lm_inputs and all(is_lm_run(p) for p in lm_inputs):  # language-model runs: loss by depth
        from ..lm.cli import loafing_command

        return loafing_command(lm_inputs, args.individual, args.out)
    runs = open_runs(args.inputs)
    out = default_out_dir(runs, args.out)
    _, overrides = split_overrides(args.inputs)
    individual_paths = list(args.individual)
    if args.train_individual:
        wanted = args.individual_depths or [format_depths(runs[0].ed.min_depths)]
        configs = select_configs(runs[0].ed, wanted, where=runs[0].name)
        individual_paths += [str(p) for p in train_individuals(args.train_individual, configs, out / "individual",
                                                               args.train_set)]
    individuals = [open_run(p, overrides) for p in individual_paths]
    unique_names(individuals)
    result = loafing_analysis(runs, individuals, depths=args.depths, all_configs=args.all, sample=args.sample,
                              seed=args.seed, bn_images=args.bn_recal, device=resolve_device(args.device),
                              overrides=overrides, progress=not args.no_progress)
    paths = write_loafing(result, out)
    print(loafing_table(result["rows"], result["summary"]))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
