"""Throughput benchmark: the engine's training step vs a minimal PyTorch loop, and the cost of ST/ST++ steps.

Same model (CIFAR ResNet-20), same in-memory batches (2,560 synthetic 32 px images held as uint8 tensors,
pad-crop + flip augmentation on whole batches, batch 128), same threads, fp32 CPU. Every measurement is one
epoch of those batches; the settings of each group below are run interleaved (A, B, C, A, B, C, ...) and the
median over repeats is reported, so a slow moment of a shared machine hits every setting alike. Groups (1)+(3)
and (2) are measured separately: a 32 px loop right after ST++ steps with many input sizes pays for rebuilding
oneDNN's cached conv primitives (measured: the engine, run first after the ST++ settings, looked 6% slower
than the plain loop; in a run without the ST++ settings it was not slower).

(1) Engine overhead: ``stimulative.train.train`` (one epoch, its own timer around the hot loop: progress bar,
    loss bookkeeping, NaN checks, per-iteration LR schedule) vs a hand-written loop
    (forward, cross-entropy, backward, SGD step, LR step) over the same batches. Target: <= 5 %.
(2) ST cost: ``StimulativeStep`` with N = 0 (CT), 1, 2 and 6 sub-networks, with full-size sub-network inputs and
    with random smaller inputs (min_input_scale 0.75 as in our CPU recipes, and the paper's 0.43), relative to CT.
    The naive cost of N extra full passes would be (1 + N) x CT.
(3) channels_last vs contiguous for the plain loop on this CPU.

Writes benchmarks/results/bench_throughput.json and prints a table.

    python benchmarks/bench_throughput.py                 # 2 threads, 5 + 3 repeats
    python benchmarks/bench_throughput.py --threads 1 --repeats 5 --images 5120
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import load_average  # benchmarks/machine.py

import stimulative as st
from stimulative.data import build_data
from stimulative.io import benchmark_record, machine_info, write_record
from stimulative.train import train
from stimulative.train.config import config_from_dict
from stimulative.train.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[1]
MODEL = "cifar_resnet20"
ST_SETTINGS = {  # name: (num_subnets, min_input_scale)
    "CT (N=0)": (0, 1.0),
    "ST N=1, 32 px": (1, 1.0),
    "ST++ N=2, 32 px": (2, 1.0),
    "ST++ N=2, 24-32 px": (2, 0.75),
    "ST++ N=6, 32 px": (6, 1.0),
    "ST++ N=6, 24-32 px": (6, 0.75),
    "ST++ N=6, 14-32 px": (6, 0.43),
}


def make_config(images: int, out_dir: str, threads: int, channels_last: bool = False, num_subnets: int = 0,
                min_input_scale: float = 1.0):
    return config_from_dict({
        "name": "throughput", "out_dir": out_dir, "epochs": 1, "batch_size": 128, "eval_batch_size": 256,
        "seed": 0, "device": "cpu", "threads": threads, "channels_last": channels_last, "bn_recal_images": 0,
        "eval_depths": [], "model": {"name": MODEL},
        "data": {"name": "synthetic", "train_subset": images, "test_subset": 128, "augment": "cifar"},
        "optim": {"name": "sgd", "lr": 0.1, "schedule": "onecycle"},
        "st": {"num_subnets": num_subnets, "kl_norm": "layer" if num_subnets > 1 else "plain",
               "amplitude": "adaptive", "min_input_scale": min_input_scale},
    })


def engine_epoch(cfg) -> float:
    """Images/s of one engine epoch, from the engine's own timer around its training loop."""
    return float(train(cfg)["final"]["img_per_s"])


def plain_epoch(cfg, channels_last: bool = False) -> float:
    """The minimal loop a person would write: same model, optimizer groups, schedule and batches."""
    bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = st.create_model(MODEL, num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(bundle.train))
    model.train()
    bundle.train.set_epoch(0)
    seen = 0
    t0 = time.perf_counter()
    for x, y in bundle.train:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += y.shape[0]
    return seen / (time.perf_counter() - t0)


def st_epoch(cfg, num_subnets: int, min_input_scale: float) -> float:
    """One epoch of StimulativeStep + optimizer step, as a user's own loop would run it."""
    bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = st.create_model(MODEL, num_classes=10)
    ed = st.ElasticDepth(model)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=num_subnets,
                              kl_norm="layer" if num_subnets > 1 else "plain", amplitude="adaptive",
                              min_input_scale=min_input_scale, seed=1)
    optimizer = build_optimizer(model, cfg)
    model.train()
    bundle.train.set_epoch(0)
    seen = 0
    t0 = time.perf_counter()
    for x, y in bundle.train:
        step(x, y)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += y.shape[0]
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="repeats of the engine-vs-plain-loop group")
    p.add_argument("--st-repeats", type=int, default=3, help="repeats of the StimulativeStep group")
    p.add_argument("--images", type=int, default=2560, help="images per measured epoch (batch 128)")
    p.add_argument("--skip-st", action="store_true", help="only the engine-overhead part")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    machine = machine_info(args.threads)
    tmp = tempfile.mkdtemp(prefix="bench_throughput_")
    cfg = make_config(args.images, tmp, args.threads)
    cfg_cl = make_config(args.images, tmp, args.threads, channels_last=True)

    loops = {
        "engine CT": lambda: engine_epoch(cfg),
        "plain loop": lambda: plain_epoch(cfg),
        "plain loop, channels_last": lambda: plain_epoch(cfg_cl, channels_last=True),
    }
    st_settings = {} if args.skip_st else {name: (lambda n=n, s=s: st_epoch(cfg, n, s))
                                           for name, (n, s) in ST_SETTINGS.items()}
    # one untimed warm-up of each code path (first-call allocations, thread pool start)
    plain_epoch(make_config(256, tmp, args.threads))
    st_epoch(make_config(256, tmp, args.threads), 2, 0.75)
    rates: dict[str, list[float]] = {name: [] for name in [*loops, *st_settings]}
    t_start = time.time()
    # Two separate interleaved groups: a 32 px loop that runs right after the many input sizes of an ST++ step
    # pays for rebuilding oneDNN's cached conv primitives, which would bias whichever setting comes first.
    for group, repeats in ((loops, args.repeats), (st_settings, args.st_repeats)):
        for r in range(repeats):
            for name, fn in group.items():
                rates[name].append(fn())
                print(f"repeat {r + 1}/{repeats}  {name:<28} {rates[name][-1]:8.1f} img/s", flush=True)
    median = {name: statistics.median(v) for name, v in rates.items()}

    overhead = 100 * (median["plain loop"] / median["engine CT"] - 1)
    result = {
        "benchmark": "bench_throughput",
        "command": "python benchmarks/bench_throughput.py " + " ".join(sys.argv[1:]),
        "config": {"model": MODEL, "batch_size": 128, "images_per_epoch": args.images, "threads": args.threads,
                   "repeats": args.repeats, "st_repeats": args.st_repeats, "dtype": "fp32", "device": "cpu", "data": "synthetic uint8 in memory"},
        "machine": {**machine, "load_average_at_end": load_average()},
        "time_s": round(time.time() - t_start, 1),
        "img_per_s": {name: round(v, 1) for name, v in median.items()},
        "img_per_s_all_repeats": {name: [round(x, 1) for x in v] for name, v in rates.items()},
        "engine_overhead_pct": round(overhead, 2),
        "channels_last_speedup": round(median["plain loop, channels_last"] / median["plain loop"], 3),
    }
    if not args.skip_st:
        ct = median["CT (N=0)"]
        result["st_cost_vs_ct"] = {name: {"num_subnets": n, "min_input_scale": s,
                                          "cost_x_ct": round(ct / median[name], 3), "naive_cost_x_ct": 1 + n}
                                   for name, (n, s) in ST_SETTINGS.items()}
    result = benchmark_record("bench_throughput", result, command=result["command"], wall_s=result["time_s"],
                              machine=result["machine"])
    write_record(result, args.out, indent=2)

    print(f"\nengine CT {median['engine CT']:.1f} img/s vs plain loop {median['plain loop']:.1f} img/s: "
          f"engine overhead {overhead:+.1f}% (target <= 5%)")
    print(f"channels_last: x{result['channels_last_speedup']:.3f} vs contiguous")
    if not args.skip_st:
        print(f"\n{'setting':<24}{'img/s':>8}{'cost x CT':>11}{'naive (1+N)':>13}")
        for name, row in result["st_cost_vs_ct"].items():
            print(f"{name:<24}{median[name]:>8.1f}{row['cost_x_ct']:>11.2f}{row['naive_cost_x_ct']:>13}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
