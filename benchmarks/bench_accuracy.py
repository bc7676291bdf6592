"""Accuracy benchmark: CT vs ST vs ST++ on CIFAR-10 at equal epochs and at equal wall-clock time.

Trains a CIFAR ResNet-20 with the shipped recipes ``recipes/cifar10_resnet20_{ct,st,stpp}.yaml`` (same
schedule, seed, data subset and epochs; only the ``st`` section differs), plus a CT run that gets the training
time ST++ used ("CT, equal time": its epoch count is the ST++ training time divided by the CT time per epoch,
both measured in the first phase). Every run goes through the ``stimulative train`` command, then
``stimulative loafing`` measures every sub-network of the ordered space inside each trained network (with BN
statistics re-estimated per sub-network, as the paper does).

CPU budget (2 cores): one training process per core (``threads=1``), two at a time:
  phase 1: CT and ST++ side by side; phase 2: ST and "CT, equal time" side by side; then the loafing tables.
With the defaults (5,000-image stratified train subset, 30 epochs, full 10,000-image test set) the whole
benchmark took 80 minutes on this project's 2-core machine; the longest single run (ST++) 33 minutes, CT 13.

Writes benchmarks/results/bench_accuracy.json (config, machine, per-run accuracy, time, loafing summary),
benchmarks/results/bench_accuracy_loafing.{json,csv,png}, and prints a table.

    python benchmarks/bench_accuracy.py --data ../shared/datasets/cifar10-jpeg.tar.xz
    python benchmarks/bench_accuracy.py --data ~/data/cifar10 --subset 0 --epochs 60 --jobs 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import load_average  # benchmarks/machine.py

from stimulative.io import benchmark_record, machine_info, write_record

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"ct": "cifar10_resnet20_ct", "st": "cifar10_resnet20_st", "stpp": "cifar10_resnet20_stpp"}
LABELS = {"ct": "CT", "st": "ST", "stpp": "ST++", "ct_time": "CT, equal time"}


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_parallel(commands: dict[str, list[str]], log_dir: Path, jobs: int) -> None:
    """Run the commands, at most ``jobs`` at a time; stop with the log's tail if one fails."""
    pending = list(commands.items())
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    env = dict(os.environ, TQDM_DISABLE="1")
    while pending or running:
        while pending and len(running) < jobs:
            key, cmd = pending.pop(0)
            log = log_dir / f"{key}.log"
            print(f"[{time.strftime('%H:%M:%S')}] start {key}: {' '.join(cmd)}", flush=True)
            running[key] = (subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env), log)
        time.sleep(2)
        for key, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            if proc.returncode:
                tail = log.read_text().splitlines()[-15:]
                sys.exit(f"{key} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
            print(f"[{time.strftime('%H:%M:%S')}] done  {key}", flush=True)


def train_command(method: str, name: str, args: argparse.Namespace, epochs: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "stimulative", "train", str(REPO / "recipes" / f"{RECIPES[method]}.yaml"),
            f"name={name}", f"out_dir={args.runs}", f"data.root={args.data}", f"data.train_subset={args.subset}",
            f"data.test_subset={args.test_subset}", f"epochs={epochs}", f"seed={seed}", f"threads={args.threads}",
            f"eval_every={epochs}", "eval_depths=[[1,1,1],[2,2,2]]", f"bn_recal_images={args.bn_recal}",
            "device=cpu"]


def summarize(run_dir: Path) -> dict:
    records = read_metrics(run_dir)
    final = records[-1]
    return {
        "epochs": final["epoch"],
        "train_time_s": round(sum(r["epoch_time_s"] for r in records), 1),
        "img_per_s": round(sum(r["img_per_s"] for r in records) / len(records), 1),
        "test_acc": final["test_acc"],
        "train_acc": round(final["train_acc"], 2),
        "test_acc_d1-1-1": final.get("test_acc_d1-1-1"),
        "test_acc_d2-2-2": final.get("test_acc_d2-2-2"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared/datasets/cifar10-jpeg.tar.xz"),
                   help="CIFAR-10: archive, ImageFolder or torchvision directory")
    p.add_argument("--subset", type=int, default=5000, help="stratified training subset (0: all 50,000)")
    p.add_argument("--test-subset", type=int, default=0, help="test images (0: all 10,000)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS),
                   help="runs to make (ct_time needs ct and stpp)")
    p.add_argument("--jobs", type=int, default=2, help="training processes at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--bn-recal", type=int, default=2000, help="BN re-estimation images per evaluated network")
    p.add_argument("--loafing-test-subset", type=int, default=2000,
                   help="test images for the loafing table (0: all; 2000 keeps 4 x 27 x 2 evaluations short)")
    p.add_argument("--runs", default=str(REPO / "benchmarks" / "runs"), help="where the runs are written")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_accuracy.json"))
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    args = p.parse_args()
    if not Path(args.data).expanduser().exists():
        sys.exit(f"--data {args.data!r} does not exist (give the CIFAR-10 archive or folder)")
    if "ct_time" in args.methods and not {"ct", "stpp"} <= set(args.methods):
        sys.exit("--methods ct_time needs ct and stpp (its epochs come from their training times)")
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    start_machine = machine_info(args.threads)

    def finished(name: str, epochs: int) -> bool:
        f = runs / name / "metrics.jsonl"
        if args.fresh or not f.exists():
            return False
        records = read_metrics(runs / name)
        return bool(records) and records[-1]["epoch"] == epochs and "test_acc" in records[-1]

    results: dict[str, dict] = {}
    for seed in args.seeds:
        names = {m: f"r20_{m}_s{seed}" for m in args.methods}
        phase1 = {m: train_command(m, names[m], args, args.epochs, seed) for m in ("stpp", "ct")
                  if m in names and not finished(names[m], args.epochs)}
        run_parallel(phase1, runs, args.jobs)
        phase2 = {}
        if "st" in names and not finished(names["st"], args.epochs):
            phase2["st"] = train_command("st", names["st"], args, args.epochs, seed)
        if "ct_time" in names:
            # CT gets the wall-clock time ST++ spent training: same schedule shape, more epochs.
            ct, stpp = summarize(runs / names["ct"]), summarize(runs / names["stpp"])
            ct_time_epochs = max(args.epochs, round(args.epochs * stpp["train_time_s"] / ct["train_time_s"]))
            if not finished(names["ct_time"], ct_time_epochs):
                phase2["ct_time"] = train_command("ct", names["ct_time"], args, ct_time_epochs, seed)
        run_parallel(phase2, runs, args.jobs)
        for m in names:
            results[f"{m}_s{seed}"] = {"method": LABELS[m], "seed": seed, "run": names[m],
                                       **summarize(runs / names[m])}

    # Loafing: every sub-network of the ordered space (27 for ResNet-20) inside each network, BN re-estimated.
    loafing_dir = runs / f"loafing_{out.stem}"
    run_dirs = [str(runs / r["run"]) for r in results.values()]
    loafing_cmd = [sys.executable, "-m", "stimulative", "loafing", *run_dirs, f"data.root={args.data}",
                   f"data.test_subset={args.loafing_test_subset}", f"data.train_subset={args.subset}",
                   "--all", "--bn-recal", str(args.bn_recal), "--out", str(loafing_dir), "--no-progress"]
    run_parallel({"loafing": loafing_cmd}, runs, 1)
    loafing = json.loads((loafing_dir / "loafing.json").read_text())
    by_run = {s["run"]: s for s in loafing["summary"]}
    for r in results.values():
        r["loafing"] = by_run.get(r["run"])
    for ext in ("json", "csv", "png"):
        shutil.copy(loafing_dir / f"loafing.{ext}", out.with_name(f"{out.stem}_loafing.{ext}"))

    doc = {
        "benchmark": "bench_accuracy",
        "command": "python benchmarks/bench_accuracy.py " + " ".join(sys.argv[1:]),
        "config": {**{k: v for k, v in vars(args).items() if k not in ("runs", "out")},
                   "model": "cifar_resnet20", "recipes": RECIPES, "batch_size": 128, "schedule": "onecycle",
                   "lr": 0.1},
        "machine": {**start_machine, "load_average_at_end": load_average()},
        "total_time_s": round(time.time() - t_start, 1),
        "runs": results,
    }
    doc = benchmark_record("bench_accuracy", doc, command=doc["command"], setting=out.stem,
                           method=",".join(args.methods), wall_s=doc["total_time_s"], machine=doc["machine"])
    write_record(doc, out, indent=2)
    print(f"\n{'run':<22}{'epochs':>7}{'train min':>10}{'test acc':>9}{'(1,1,1)':>9}{'(2,2,2)':>9}"
          f"{'mean sub (BN)':>14}")
    for r in results.values():
        lo = r.get("loafing") or {}
        mean_sub = lo.get("mean_sub_acc_bn")
        print(f"{r['method'] + ' s' + str(r['seed']):<22}{r['epochs']:>7}{r['train_time_s'] / 60:>10.1f}"
              f"{r['test_acc']:>9.2f}{r['test_acc_d1-1-1'] or 0:>9.2f}{r['test_acc_d2-2-2'] or 0:>9.2f}"
              f"{mean_sub if mean_sub is not None else float('nan'):>14.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
