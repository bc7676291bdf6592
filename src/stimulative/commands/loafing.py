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

import torch

from ..analysis.individual import train_individuals
from ..analysis.loafing import individual_accuracy, individual_depths, loafing_summary, subnetwork_accuracy
from ..analysis.plots import plot_loafing, run_colors
from ..analysis.runs import (
    add_depth_selection,
    add_run_arguments,
    default_out_dir,
    format_depths,
    load_run,
    load_runs,
    resolve_device,
    run_data,
    select_configs,
    split_overrides,
    unique_names,
)
from ..analysis.tables import write_csv, write_json

HELP = "accuracy of every sub-network inside trained networks vs trained alone (network loafing)"

COLUMNS = ["run", "kind", "depths", "num_blocks", "acc", "acc_bn", "loss", "loss_bn", "n"]


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
    torch.manual_seed(args.seed)
    runs = load_runs(args.inputs)
    out = default_out_dir(runs, args.out)
    device = resolve_device(args.device)
    _, overrides = split_overrides(args.inputs)
    progress = not args.no_progress
    if args.bn_recal < 0:
        raise ValueError(f"--bn-recal must be >= 0, got {args.bn_recal}")

    individual_paths = list(args.individual)
    if args.train_individual:
        wanted = args.individual_depths or [format_depths(runs[0].ed.min_depths)]
        configs = select_configs(runs[0].ed, wanted, where=runs[0].name)
        individual_paths += [str(p) for p in train_individuals(args.train_individual, configs, out / "individual",
                                                               args.train_set)]
    individuals = [load_run(p, overrides) for p in individual_paths]
    unique_names(individuals)

    rows: list[dict] = []
    configs_of = {}
    for r in runs:
        configs = select_configs(r.ed, args.depths, args.all, args.sample, args.seed, where=r.name)
        for ind in individuals:  # make sure every matching alone-config is evaluated inside
            depths = individual_depths(ind)
            if _in_space(r, depths) and depths not in configs:
                configs.append(depths)
        configs_of[r.name] = configs
        data = run_data(r.config, device, r.loaded.num_classes)
        rows += subnetwork_accuracy(r.ed, configs, data.test, data.train, args.bn_recal, run=r.name,
                                    device=device, progress=progress)
    alone_rows = []
    for ind in individuals:
        depths = individual_depths(ind)
        if not any(_in_space(r, depths) for r in runs):
            raise ValueError(f"individual run {ind.name!r} ({ind.path}) has depths {format_depths(depths)}, which "
                             f"is not a sub-network of {', '.join(f'{r.name} {r.ed.full_depths}' for r in runs)}")
        # evaluated on the first checkpoint's test set, so every number in the table uses the same images
        alone_rows.append(individual_accuracy(ind, run_data(runs[0].config, device).test, device=device))
    rows += alone_rows

    summaries = [loafing_summary(rows, r.name, r.ed.full_depths,
                                 [a for a in alone_rows if _in_space(r, [int(d) for d in a["depths"].split(",")])])
                 for r in runs]
    settings = {"bn_recal_images": args.bn_recal, "seed": args.seed, "overrides": overrides,
                "checkpoints": {r.name: str(r.path) for r in runs},
                "individual": {i.name: str(i.path) for i in individuals},
                "selection": "depths" if args.depths else "all" if args.all else
                             f"sample {args.sample}" if args.sample else "default",
                "test_images": rows[0]["n"] if rows else 0, "num_classes": runs[0].loaded.num_classes}
    write_json({"rows": rows, "summary": summaries, "settings": settings}, out / "loafing.json")
    write_csv(rows, out / "loafing.csv", COLUMNS)
    write_csv(summaries, out / "loafing_summary.csv")
    plot_loafing(rows, out / "loafing.png", bn_images=args.bn_recal, chance=100.0 / runs[0].loaded.num_classes,
                 colors=run_colors([r.name for r in runs]))
    _print_table(rows, summaries)
    print(f"wrote {out / 'loafing.json'}, {out / 'loafing.csv'}, {out / 'loafing.png'}")
    return 0


def _in_space(run, depths: list[int]) -> bool:
    try:
        run.ed.block_modes(depths)
    except ValueError:
        return False
    return True


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_table(rows: list[dict], summaries: list[dict]) -> None:
    print(f"{'run':<24} {'kind':<7} {'depths':<12} {'blocks':>6} {'acc %':>7} {'acc+BN %':>9}")
    for r in rows:
        print(f"{r['run'][:24]:<24} {r['kind']:<7} {r['depths']:<12} {r['num_blocks']:>6} {_fmt(r['acc']):>7} "
              f"{_fmt(r['acc_bn']):>9}")
    for s in summaries:
        line = (f"{s['run']}: full {_fmt(s['full_acc'])}% | {s['n_subnets']} sub-networks: mean "
                f"{_fmt(s['mean_sub_acc'])}% (drop {_fmt(s['mean_drop'])} pts)")
        if s["mean_sub_acc_bn"] is not None:
            line += f", with BN re-estimation {_fmt(s['mean_sub_acc_bn'])}% (drop {_fmt(s['mean_drop_bn'])} pts)"
        if s["gap_vs_alone"] is not None:
            line += f" | loafing gap vs alone {_fmt(s['gap_vs_alone'])} pts"
            if s["gap_vs_alone_bn"] is not None:
                line += f" ({_fmt(s['gap_vs_alone_bn'])} with BN re-estimation)"
        print(line)
