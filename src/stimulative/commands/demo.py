"""Offline demo of network loafing: train a small ResNet with common training (CT) and with ST++, then compare
the accuracy of every sub-network inside each of them.

Uses scikit-learn's bundled 8x8 digits (upsampled; no download), or synthetic data when scikit-learn is
missing. A few minutes on 2 CPU cores. Sub-networks keep the first d_i blocks of each stage (ordered space);
their BatchNorm statistics are re-estimated before evaluation. Under CT the shallow sub-networks collapse
("loafing"); under ST++ they stay close to the full network.

Writes OUT/ct and OUT/stpp (normal training runs) and OUT/demo.json, OUT/loafing.csv, OUT/loafing.png.

examples:
  stimulative demo
  stimulative demo --out runs/demo --epochs 30
  stimulative demo --quick          # seconds: a smoke test, the numbers mean little
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .options import add_bn_recal

HELP = "offline CT vs ST++ demo on a small ResNet: main accuracy and the loafing table (a few CPU minutes)"

# cifar_resnet20 at 16x16 px on digits (1437 train / 360 test images); ST++ = 3 sub-networks/step, layer-norm KL-
# with the adaptive amplitude, sub-network inputs 12..16 px. Measured (`/usr/bin/time -v stimulative demo`, 1
# thread, on a 2-core CPU shared with two background 1-thread training jobs and other benchmark work: load average
# 4.3-5.0): 100 s wall (the demo's own line: training 72 s, total 93 s), 66% of a core; CT 99.44% / ST++ 99.72%
# main; sub-networks inside CT: mean 90.0%, worst 59.6% ((1,1,1)); inside ST++: mean 99.3%, worst 98.3%; BN
# re-estimated with --bn-recal's default (2000 images: here all 1437 training images).
DEMO_SETTINGS: dict = {
    "model": {"name": "cifar_resnet20"},
    "data": {"name": "digits", "input_size": 16, "padding": 2},
    "batch_size": 64,
    "eval_batch_size": 512,
    "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "onecycle"},
    "eval_every": 1000,
    "log_every": 10,
}
STPP_SETTINGS: dict = {"num_subnets": 3, "kl_norm": "layer", "amplitude": "adaptive", "min_input_scale": 0.75}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo); a rerun replaces "
                        "the runs OUT/ct and OUT/stpp")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of each run (default: 15)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test setting (tiny model, 1 epoch, few images): seconds")
    add_bn_recal(parser)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1, fastest for this small model on a busy 2-core machine; "
                             "0 = torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=["digits", "synthetic"], default="digits",
                        help="digits (scikit-learn, offline) or synthetic (default: digits)")


def _base_config(args: argparse.Namespace, data_name: str) -> dict:
    import copy

    base = copy.deepcopy(DEMO_SETTINGS)
    base.update(out_dir=str(args.out), epochs=args.epochs, seed=args.seed, threads=args.threads, device="cpu")
    base["data"]["name"] = data_name
    if args.quick:
        base["model"]["name"] = "cifar_resnet_tiny"
        base["epochs"] = 1
        base["data"].update(train_subset=128, test_subset=64)
        base["batch_size"] = 32
    return base


def _digits_available() -> bool:
    from ..data import build_data
    from ..train.config import config_from_dict

    try:
        build_data(config_from_dict({"data": {"name": "digits", "input_size": 8}}).data, 8, 8)
    except (ValueError, ImportError, ModuleNotFoundError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.loafing import loafing_summary, subnetwork_accuracy
    from ..analysis.plots import plot_loafing
    from ..core.sampling import SampleSpace
    from ..io import write_csv, write_json
    from ..runs import open_run
    from ..train import train
    from ..train.config import config_from_dict
    from ..train.log import run_colors

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data_name = args.data
    if data_name == "digits" and not _digits_available():
        print("stimulative demo: scikit-learn digits are not available; using synthetic data instead")
        data_name = "synthetic"
    out = Path(args.out)
    t_start = time.perf_counter()
    runs = {}
    for name, st_settings in (("ct", {"num_subnets": 0}), ("stpp", STPP_SETTINGS)):
        raw = _base_config(args, data_name)
        raw.update(name=name, st=dict(st_settings), overwrite=True)
        cfg = config_from_dict(raw)
        print(f"stimulative demo: training {name.upper()} ({cfg.model.name}, {cfg.epochs} epochs, "
              f"{cfg.st.num_subnets} sub-networks/step) -> {cfg.run_dir}", flush=True)
        runs[name] = {"cfg": cfg, "summary": train(cfg)}
    train_time = time.perf_counter() - t_start

    # ---- the loafing table: every sub-network of the ordered space inside each trained network --------------
    bn_images = min(args.bn_recal, 128) if args.quick else args.bn_recal
    rows, summary, configs = [], {}, []
    for name, r in runs.items():
        run = open_run(Path(r["summary"]["run_dir"]) / "last.pt", name=name)
        data = run.data()
        configs = list(SampleSpace.for_model(run.ed, "ordered"))
        rows += subnetwork_accuracy(run.ed, configs, data.test, data.train, bn_images, run=name, own_bn=False,
                                    progress=False)
        s = loafing_summary(rows, name, run.ed.full_depths)
        summary[name] = {"main_acc": r["summary"]["final"]["test_acc"], "full_acc_bn": s["full_acc_bn"],
                         "mean_subnet_acc": s["mean_sub_acc_bn"], "min_subnet_acc": s["min_sub_acc_bn"],
                         "loafing_gap": s["mean_drop_bn"]}
    total_time = time.perf_counter() - t_start

    acc = {(r["run"], r["depths"]): r["acc_bn"] for r in rows}
    table = [{"depths": r["depths"], "blocks": r["num_blocks"], "ct_acc": acc["ct", r["depths"]],
              "stpp_acc": acc["stpp", r["depths"]]} for r in rows if r["run"] == "ct"]
    print()
    print(f"main network (test acc): CT {summary['ct']['main_acc']:.2f}%   ST++ {summary['stpp']['main_acc']:.2f}%")
    print("accuracy of every sub-network inside the trained network (BN re-estimated on "
          f"{bn_images} train images):")
    print(f"{'sub-network':>12} {'blocks':>6} {'CT':>8} {'ST++':>8}")
    for t in table:
        print(f"{t['depths']:>12} {t['blocks']:>6} {t['ct_acc']:>7.2f}% {t['stpp_acc']:>7.2f}%")
    for name, label in (("ct", "CT"), ("stpp", "ST++")):
        s = summary[name]
        print(f"{label:>5}: mean sub-network {s['mean_subnet_acc']:.2f}%, worst {s['min_subnet_acc']:.2f}%, "
              f"loafing gap (full - mean sub-network) {s['loafing_gap']:.2f} points")
    print(f"data {data_name}; training {train_time:.0f}s, total {total_time:.0f}s; results in {out}")

    write_csv(table, out / "loafing.csv")
    write_json({"data": data_name, "epochs": runs["ct"]["cfg"].epochs, "model": runs["ct"]["cfg"].model.name,
                "stpp_settings": STPP_SETTINGS, "bn_recal_images": bn_images, "summary": summary, "rows": table,
                "train_time_s": train_time, "total_time_s": total_time}, out / "demo.json", indent=2)
    plot_loafing(rows, out / "loafing.png", bn_images=bn_images, chance=100.0 / len(data.classes),
                 colors=run_colors(list(runs)))
    return 0
