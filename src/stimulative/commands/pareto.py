"""Accuracy vs cost of every depth configuration of a trained model; pick (and export) one under a budget.

For each configuration of the ordered space -- all of them when the space has at most 64 entries (--all to
force), a seeded sample (--sample K) or a greedy walk from the full network that removes one block at a time
choosing the least accuracy loss (--greedy; the default for large spaces) -- the sub-network is cut out, its
BatchNorm statistics re-estimated on --bn-recal training images, and its test accuracy, parameters, FLOPs
(FlopCounterMode: convolutions and matmuls, 2 FLOPs per MAC; MACs = FLOPs/2 also reported) and median CPU
latency at batch 1 and 64 measured. Writes OUT/pareto.{csv,json,png}: all points grey, the Pareto fronts
(accuracy vs latency, accuracy vs FLOPs) highlighted and labelled with their depths.

The greedy walk and the budget choice use test accuracy; pass data.* overrides pointing at held-out data for
an unbiased choice.

examples:
  stimulative pareto runs/r20_stpp/best.pt data.root=cifar10.tar.xz --bn-recal 2000
  stimulative pareto runs/r20_stpp/best.pt --budget-ms 0.8 --export r20_fast.onnx --format onnx
"""

from __future__ import annotations

import argparse

from .options import add_bn_recal

HELP = "accuracy/latency/FLOPs Pareto front of the sub-networks; pick one under a budget"

__all__ = ["HELP", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt checkpoint or a run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="change the checkpoint's config, e.g. data.root=/data/cifar10 data.test_subset=2000")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every configuration of the ordered space")
    which.add_argument("--sample", type=int, default=0, metavar="K",
                       help="K seeded random configurations (always with the full and the smallest)")
    which.add_argument("--greedy", action="store_true",
                       help="greedy walk: remove one block at a time, least accuracy loss first")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    add_bn_recal(parser, "per configuration")
    parser.add_argument("--budget-ms", type=float, default=None, metavar="X",
                        help="pick the most accurate config with batch-1 CPU latency <= X ms")
    parser.add_argument("--budget-flops", type=float, default=None, metavar="F",
                        help="pick the most accurate config with <= F FLOPs per image (e.g. 2e7)")
    parser.add_argument("--export", default=None, metavar="OUT", help="export the picked config to OUT")
    parser.add_argument("--format", default="pt", metavar="FORMAT", help="export format (see stimulative export)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default: <checkpoint dir>/pareto)")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="input side for FLOPs/latency (default: the config's image size)")
    parser.add_argument("--latency-batch", default="1,64", metavar="B1,B2",
                        help="batch sizes of the latency measurement (default 1,64; the budget uses the first)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (median; default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads for latency (0: leave as is)")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights")


def _strategy(args: argparse.Namespace) -> str:
    if args.all:
        return "all"
    if args.sample:
        return "sample"
    if args.greedy:
        return "greedy"
    return "auto"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.export import check_format, export_run
    from ..deploy.pareto import pareto_table, plot_pareto, select_under_budget, write_table
    from ..runs import default_out_dir, open_run

    if args.export is not None:
        check_format(args.format)
        if args.budget_ms is None and args.budget_flops is None:
            raise ValueError("--export needs a budget (--budget-ms or --budget-flops) to pick the config")
    if args.sample < 0:
        raise ValueError(f"--sample must be positive, got {args.sample}")
    try:
        batch_sizes = [int(b) for b in args.latency_batch.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--latency-batch must be comma-separated ints like 1,64, got {args.latency_batch!r}") \
            from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"--latency-batch must be positive ints like 1,64, got {args.latency_batch!r}")
    for value, name in ((args.budget_ms, "--budget-ms"), (args.budget_flops, "--budget-flops")):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)

    run = open_run(args.checkpoint, args.overrides, use_ema=args.ema)
    if run.exported:
        raise ValueError(f"{args.checkpoint} is an exported sub-network (depths {run.loaded.depths}); "
                         "pareto needs the full training checkpoint")
    table, meta = pareto_table(run, _strategy(args), args.sample, args.seed, args.bn_recal, args.input_size,
                               batch_sizes, args.repeats, args.warmup)
    latency_key = f"latency_ms_b{batch_sizes[0]}"
    out_dir = default_out_dir([run], args.out, folder="pareto")
    meta["budget"] = {"ms": args.budget_ms, "flops": args.budget_flops}
    selected, budget_error = None, None
    if args.budget_ms is not None or args.budget_flops is not None:
        try:
            selected = select_under_budget(table, args.budget_ms, args.budget_flops, latency_key=latency_key)
        except ValueError as err:  # still write the table and the plot, then report
            budget_error = err
    meta["selected"] = selected
    csv_path, json_path = write_table(table, out_dir, meta)
    png = plot_pareto(table, out_dir / "pareto.png", selected=selected, latency_key=latency_key,
                      title=f"{run.config.model.name}: {len(table)} depth configs ({meta['strategy']}), "
                            "BN re-estimated")
    front = [r for r in table if r.get(f"front_{latency_key}")]
    print(f"{len(table)} configs ({meta['strategy']} of {meta['space_size']}); Pareto front (accuracy vs "
          f"{latency_key}):")
    for r in sorted(front, key=lambda r: r[latency_key]):
        print(f"  {r['label']:>12}  acc {r['acc']:6.2f}%  {r[latency_key]:8.3f} ms  {r['flops'] / 1e6:9.2f} MFLOPs  "
              f"{r['params']:,} params")
    print(f"wrote {csv_path}, {json_path}, {png}")
    if budget_error is not None:
        raise budget_error
    if selected is not None:
        budget = " and ".join(s for s in (f"{args.budget_ms:g} ms" if args.budget_ms is not None else "",
                                          f"{args.budget_flops:g} FLOPs" if args.budget_flops is not None else "")
                              if s)
        print(f"most accurate under {budget}: depths {selected['label']} -- acc {selected['acc']:.2f}%, "
              f"{selected[latency_key]:.3f} ms, {selected['flops'] / 1e6:.2f} MFLOPs, {selected['params']:,} params")
        if args.export is not None:
            # re-extracted: the BN re-estimation sees the same images in the same order, so the weights are the
            # ones that were measured (keeping every profiled sub-network in memory would not scale)
            metrics = {"acc": selected["acc"], "loss": selected["loss"], "n": selected["test_images"]}
            summary = export_run(run, selected["depths"], args.export, args.format, bn_images=args.bn_recal,
                                 input_size=meta["input_size"], data=run.data(), metrics=metrics)
            print(f"exported {selected['label']} as {args.format} -> {args.export} "
                  f"(reload check: max |diff| {summary.get('max_abs_diff')}); summary: {summary['summary']}")
    return 0
