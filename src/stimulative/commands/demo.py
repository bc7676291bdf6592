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
import csv
import json
import time
from pathlib import Path

HELP = "offline CT vs ST++ demo on a small ResNet: main accuracy and the loafing table (a few CPU minutes)"

# cifar_resnet20 at 16x16 px on digits (1437 train / 360 test images); ST++ = 3 sub-networks/step, layer-norm KL-
# with the adaptive amplitude, sub-network inputs 12..16 px. Measured (`stimulative demo`, 2-core CPU, idle, 1 thread):
# 108 s wall in all; CT 99.44% / ST++ 99.72% main; sub-networks inside CT: mean 90.3%, worst 60.5% ((1,1,1));
# inside ST++: mean 99.3%, worst 98.1%. Under heavy load from other processes the same run took 6 minutes.
DEMO_SETTINGS: dict = {
    "model": {"name": "cifar_resnet20"},
    "data": {"name": "digits", "input_size": 16, "padding": 2},
    "batch_size": 64,
    "eval_batch_size": 512,
    "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "onecycle"},
    "eval_every": 1000,
    "log_every": 10,
}
STPP_SETTINGS: dict = {"num_subnets": 3, "kl": "layer", "amplitude": "adaptive", "min_input_scale": 0.75}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of each run (default: 15)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test setting (tiny model, 1 epoch, few images): seconds")
    parser.add_argument("--bn-recal", type=int, default=500, metavar="N",
                        help="training images for BN re-estimation per sub-network (default: 500)")
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

    from ..core.evaluation import evaluate_depth
    from ..core.sampling import SampleSpace
    from ..data import build_data
    from ..train import train
    from ..train.checkpoint import load_model
    from ..train.config import config_from_dict

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
        raw.update(name=name, st=dict(st_settings))
        cfg = config_from_dict(raw)
        print(f"stimulative demo: training {name.upper()} ({cfg.model.name}, {cfg.epochs} epochs, "
              f"{cfg.st.num_subnets} sub-networks/step) -> {cfg.run_dir}", flush=True)
        summary = train(cfg)
        runs[name] = {"cfg": cfg, "summary": summary}
    train_time = time.perf_counter() - t_start

    # ---- loafing table: every sub-network of the ordered space inside each trained network ------------------
    table: dict[str, dict[str, float]] = {}
    configs = None
    bn_images = min(args.bn_recal, 128) if args.quick else args.bn_recal
    for name, r in runs.items():
        loaded = load_model(Path(r["summary"]["run_dir"]) / "last.pt")
        cfg = r["cfg"]
        bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
        configs = list(SampleSpace.for_model(loaded.ed, "ordered"))
        table[name] = {}
        for depths in configs:
            acc = evaluate_depth(loaded.ed, depths, bundle.test, bundle.train, bn_images=bn_images)["acc"]
            table[name][",".join(map(str, depths))] = acc
    total_time = time.perf_counter() - t_start

    keys = [",".join(map(str, d)) for d in configs]
    full = keys[-1]
    lines = [f"{'sub-network':>12} {'blocks':>6} {'CT':>8} {'ST++':>8}"]
    rows = []
    for d, k in zip(configs, keys):
        rows.append({"depths": k, "blocks": sum(d), "ct_acc": table["ct"][k], "stpp_acc": table["stpp"][k]})
        lines.append(f"{k:>12} {sum(d):>6} {table['ct'][k]:>7.2f}% {table['stpp'][k]:>7.2f}%")
    summary = {}
    for name in ("ct", "stpp"):
        subs = [table[name][k] for k in keys if k != full]
        summary[name] = {"main_acc": runs[name]["summary"]["final"]["test_acc"], "full_acc_bn": table[name][full],
                         "mean_subnet_acc": sum(subs) / len(subs), "min_subnet_acc": min(subs),
                         "loafing_gap": table[name][full] - sum(subs) / len(subs)}
    print()
    print(f"main network (test acc): CT {summary['ct']['main_acc']:.2f}%   ST++ {summary['stpp']['main_acc']:.2f}%")
    print("accuracy of every sub-network inside the trained network (BN re-estimated on "
          f"{bn_images} train images):")
    print("\n".join(lines))
    for name, label in (("ct", "CT"), ("stpp", "ST++")):
        s = summary[name]
        print(f"{label:>5}: mean sub-network {s['mean_subnet_acc']:.2f}%, worst {s['min_subnet_acc']:.2f}%, "
              f"loafing gap (full - mean sub-network) {s['loafing_gap']:.2f} points")
    print(f"data {data_name}; training {train_time:.0f}s, total {total_time:.0f}s; results in {out}")

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "loafing.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "demo.json").write_text(json.dumps({
        "data": data_name, "epochs": runs["ct"]["cfg"].epochs, "model": runs["ct"]["cfg"].model.name,
        "stpp_settings": STPP_SETTINGS, "bn_recal_images": bn_images, "summary": summary, "rows": rows,
        "train_time_s": train_time, "total_time_s": total_time}, indent=2) + "\n")
    _plot(rows, out / "loafing.png", runs["ct"]["cfg"].model.name, data_name)
    return 0


def _plot(rows: list[dict], path: Path, model: str, data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, marker in (("ct_acc", "CT", "o"), ("stpp_acc", "ST++", "s")):
        ax.scatter([r["blocks"] for r in rows], [r[key] for r in rows], label=label, marker=marker, alpha=0.75)
    ax.set_xlabel("residual blocks kept in the sub-network")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"sub-networks inside {model} on {data} (BN re-estimated)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
