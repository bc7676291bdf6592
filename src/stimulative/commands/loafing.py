"""Network loafing: accuracy of every sub-network inside trained networks (and trained alone).

For each checkpoint, evaluates the sub-networks of the ordered sample space (keep the first d_i blocks of
stage i) on the test set, once with the network's own BatchNorm statistics and once with statistics
re-estimated for that sub-network on --bn-recal training images. Networks of the same family trained alone
(--alone, matched by their depths: a ResNet-20 is the 3,3,3 sub-network of a ResNet-56) show the
"inside the ensemble vs alone" gap of the paper.

Writes loafing.json (rows, per-run summary, settings), loafing.csv and loafing.png to --out.

examples:
  stimulative loafing runs/ct runs/stpp data.test_subset=2000
  stimulative loafing runs/ct56 --depths 3,3,3 5,5,5 --alone runs/resnet20 runs/resnet32
  stimulative loafing runs/ct56 --sample 16 --bn-recal 0
  stimulative loafing runs/lm_llama_ct runs/lm_llama_st --alone runs/lm_llama_d4 --out runs/lm_loafing   (LM runs:
      validation loss of every depth, written to loafing_lm.{json,csv,png})
"""

from __future__ import annotations

import argparse

from .options import add_depth_selection, add_renamed_option, add_run_arguments

HELP = "accuracy of every sub-network inside trained networks vs trained alone (network loafing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_depth_selection(parser, "a seeded random sample of K configs (always with "
                        "the full and smallest net); default: all when the space has <= 64 configs, else 32")
    parser.add_argument("--alone", nargs="+", default=[], metavar="RUN",
                        help="checkpoints/run dirs of the same sub-network architectures trained alone")
    parser.add_argument("--train-alone", metavar="RECIPE",
                        help="first train the baselines alone with this recipe (one run per --alone-depths "
                             "config, written to OUT/alone; finished runs are reused)")
    parser.add_argument("--alone-depths", nargs="+", metavar="D1,D2,..",
                        help="configs to train alone with --train-alone (default: the smallest net)")
    parser.add_argument("--train-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for --train-alone runs, e.g. epochs=5 data.train_subset=5000")
    # the names of version 0.1.0, read until the next release
    add_renamed_option(parser, "--individual", "--alone", "alone", nargs="+", metavar="RUN")
    add_renamed_option(parser, "--train-individual", "--train-alone", "train_alone", metavar="RECIPE")
    add_renamed_option(parser, "--individual-depths", "--alone-depths", "alone_depths", nargs="+",
                       metavar="D1,D2,..")


def run(args: argparse.Namespace) -> int:
    from ..analysis.alone import train_alone
    from ..analysis.loafing import loafing_analysis, loafing_table, write_loafing
    from ..core.elastic import format_depths
    from ..lm.config import is_lm_run
    from ..runs import default_out_dir, open_run, open_runs, select_configs, split_overrides, unique_names
    from ..train.runtime import resolve_device

    lm_inputs = [p for p in args.inputs if "=" not in p]
    if lm_inputs and all(is_lm_run(p) for p in lm_inputs):  # language-model runs: loss by depth
        return _lm_loafing(lm_inputs, args.alone, args.out)
    runs = open_runs(args.inputs)
    out = default_out_dir(runs, args.out)
    _, overrides = split_overrides(args.inputs)
    alone_paths = list(args.alone)
    if args.train_alone:
        wanted = args.alone_depths or [format_depths(runs[0].ed.min_depths)]
        configs = select_configs(runs[0].ed, wanted, where=runs[0].name)
        alone_dir = out / "alone"
        if not alone_dir.exists() and (out / "individual").is_dir():  # written by version 0.1.0: reuse its runs
            alone_dir = out / "individual"
        alone_paths += [str(p) for p in train_alone(args.train_alone, configs, alone_dir, args.train_set)]
    alone = [open_run(p, overrides) for p in alone_paths]
    unique_names(alone)
    result = loafing_analysis(runs, alone, depths=args.depths, all_configs=args.all, sample=args.sample,
                              seed=args.seed, bn_images=args.bn_recal, device=resolve_device(args.device),
                              overrides=overrides, progress=not args.no_progress)
    paths = write_loafing(result, out)
    print(loafing_table(result["rows"], result["summary"]))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _lm_loafing(runs: list[str], alone: list[str], out: str | None) -> int:
    """Language-model runs: validation loss of every depth inside each run vs the runs with fewer layers trained
    alone (``--alone``), written to OUT/loafing_lm.{json,csv,png}."""
    from pathlib import Path

    from ..lm.loafing import lm_loafing

    out = out or str(Path(runs[0]).expanduser().parent / "loafing_lm")
    result = lm_loafing(list(runs), list(alone), out)
    for row in result["rows"]:
        rel = f" ({row['rel_to_alone']:+.1%} vs alone)" if "rel_to_alone" in row else ""
        print(f"{row['run']:>24} depth {row['depth']:>2}: loss {row['loss']:.4f} ppl {row['ppl']:.3f}{rel}")
    for k, row in sorted(result["alone"].items()):
        print(f"{row['run']:>24} depth {k:>2} trained alone: loss {row['loss']:.4f} ppl {row['ppl']:.3f}")
    print(f"wrote {out}/loafing_lm.json, .csv, .png", flush=True)
    return 0
