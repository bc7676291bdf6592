"""Ablations for "When does ST++ help?": one factor at a time against a fixed baseline, several seeds.

Every run goes through ``stimulative train`` (a shipped recipe + ``key=value`` overrides). As soon as a run
ends, its record is written to ``benchmarks/results/ablation/<plan>/<run>.json`` with ``setting``, ``method``
(CT / ST / ST++), ``variant``, ``seed``, ``epochs``, ``test_acc``, ``wall_s``, the exact command and the
final metrics, so an interrupted invocation loses at most the runs in flight; rerunning the same command
skips the runs whose record exists. ``report.py`` turns the records into the tables of docs/peers.md
("When does ST++ help?").

A plan is a fixed setting (model, data subset, epochs, schedule) and a list of variants, each a method and
the overrides that differ from the setting's baseline. ``ct_time`` variants are CT given the wall-clock
time of another variant (epochs scaled by the measured time ratio of the same seed's runs).

CPU budget (2 cores): ``--jobs 2 --threads 1`` (one process per core).

    python benchmarks/bench_ablation.py --plan r20_proxy --seeds 0 1 --data ../shared/datasets/cifar10-jpeg.tar.xz
    python benchmarks/bench_ablation.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import reap  # benchmarks/machine.py

from stimulative import io as sio
from stimulative.io import benchmark_record, machine_info

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ablation"

# The ST++ baseline of the ablations is the shipped CIFAR recipe: 3 sub-networks, KL- (layer, adaptive
# amplitude), inputs 24..32 px, ordered sampling. Each variant changes ONE factor of it.
STPP = "cifar10_resnet20_stpp"
CT = "cifar10_resnet20_ct"
# The ablation baseline is the ST++ recipe as it was when the ablation ran: lambda = 1 per sub-network. The recipe
# has since taken the ablation's winner (kl_weight 1/3), so every ST++ variant states lambda = 1 first and then
# its own change (later overrides win).
STPP_BASE = ["st.kl_weight=1.0"]


def stpp(*overrides: str) -> tuple[str, str, list[str]]:
    return ("ST++", STPP, [*STPP_BASE, *overrides])


R20_PROXY = {
    "setting": "CIFAR-10 ResNet-20, 5k-image subset, 15 ep, bs 128, one-cycle lr 0.1, 2k test images",
    "common": ["data.train_subset=5000", "data.test_subset=2000", "epochs=15", "bn_recal_images=1000",
               "eval_depths=[[1,1,1]]"],
    "variants": {
        "ct": ("CT", CT, []),
        # CT given ST++'s training time: 2.43x the epochs, the ST++/CT train-time ratio of the same recipes
        # measured on a quiet machine (benchmarks/results/bench_accuracy.json: CT 73 epochs = ST++ 30 epochs).
        "ct_equal_time": ("CT", CT, ["epochs=36"]),
        "st": ("ST", "cifar10_resnet20_st", []),
        "stpp": stpp(),
        "stpp_plainkl": stpp("st.kl_norm=plain"),
        "stpp_layersg": stpp("st.kl_norm=layer_sg"),
        "stpp_w1n": stpp("st.kl_weight=0.3333"),
        "stpp_cosup": stpp("st.kl_schedule=cosine_up"),
        "stpp_scale1": stpp("st.min_input_scale=1.0"),
        "stpp_n1": stpp("st.num_subnets=1"),
        "stpp_interssr": stpp("st.sampling=inter_stage", "st.ranges=[2,2,2]"),
        # the instrumented runs show sub-network gradients pointing against the main one (negative cosine):
        # remove that component (PCGrad projection) and see whether the main network recovers
        "stpp_proj": stpp("st.project_conflicts=true"),
        # the two factors that each closed most of the gap at seed 0, together (chosen after the ablation)
        "stpp_w1n_cosup": stpp("st.kl_weight=0.3333", "st.kl_schedule=cosine_up"),
        "stpp_frac50": stpp("st.subnet_fraction=0.5"),
        "stpp_every2": stpp("st.subnet_every=2"),
        # cost levers on the winner (lambda = 1/N, the recipes' default now): can its cost be cut?
        "stpp_w1n_frac50": stpp("st.kl_weight=0.3333", "st.subnet_fraction=0.5"),
        "stpp_w1n_every2": stpp("st.kl_weight=0.3333", "st.subnet_every=2"),
    },
}
# The offline demo's setting (``stimulative demo``: scikit-learn digits, 16 px), for fast instrumented traces of
# the main loss stall the demo shows under ST++ (run with --stats-every 1).
DIGITS_DEMO = {
    "setting": "digits (scikit-learn, 1,437 train / 360 test, 16 px) ResNet-20, 15 ep, bs 64, one-cycle lr 0.1",
    "common": ["data.name=digits", "data.input_size=16", "data.padding=2", "batch_size=64", "epochs=15",
               "bn_recal_images=500", "eval_depths=[[1,1,1]]", "data.train_subset=0", "data.test_subset=0"],
    "variants": {k: R20_PROXY["variants"][k] for k in ("ct", "stpp", "stpp_layersg", "stpp_plainkl", "stpp_w1n",
                                                       "stpp_cosup", "stpp_proj")},
}
# The confirmation of the ablations' winner against CT: the same setting, 3 FRESH seeds (10, 11, 12), not the
# seeds (0, 1) the winner was chosen on.
R20_CONFIRM = {**R20_PROXY, "setting": R20_PROXY["setting"] + "; confirmation on fresh seeds", "variants": {k: R20_PROXY["variants"][k] for k in ("ct", "stpp_w1n", "stpp_w1n_cosup")}}
PLANS = {"r20_proxy": R20_PROXY, "r20_confirm": R20_CONFIRM, "digits_demo": DIGITS_DEMO}


def record_path(plan: str, name: str) -> Path:
    return RESULTS / plan / f"{name}.json"


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_command(plan: dict, recipe: str, overrides: list[str], name: str, seed: int,
                  args: argparse.Namespace, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "stimulative", "train", str(REPO / "recipes" / f"{recipe}.yaml"),
            f"name={name}", f"out_dir={args.runs}", f"data.root={args.data}", *plan["common"], *overrides,
            *extra, f"seed={seed}", f"threads={args.threads}", "device=cpu", "eval_every=1000",
            f"stats_every={args.stats_every}"]


def finished_epochs(run_dir: Path) -> int:
    """Epochs of a run that ended with a final evaluation (0 when missing, partial or still running)."""
    try:
        records = read_metrics(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    final = records[-1] if records else {}
    return int(final["epoch"]) if "test_acc" in final and not final.get("partial") else 0


def write_record(plan_name: str, plan: dict, variant: str, method: str, seed: int, name: str,
                 command: list[str], wall_s: float | None, args: argparse.Namespace) -> dict:
    records = read_metrics(Path(args.runs) / name)
    if wall_s is None:  # a run that finished while no invocation was watching it: its own times
        wall_s = sum(r["epoch_time_s"] + r.get("eval_time_s", 0.0) for r in records)
    final = records[-1]
    shown = ["python -m stimulative" if c == sys.executable else c for c in command]
    shown = [c for c in shown if c not in ("-m", "stimulative")] if shown[0].startswith("python") else shown
    rec = {
        "plan": plan_name, "setting": plan["setting"], "variant": variant, "method": method, "seed": seed,
        "epochs": final["epoch"], "test_acc": final["test_acc"], "train_acc": round(final["train_acc"], 2),
        "test_acc_d1-1-1": final.get("test_acc_d1-1-1"), "wall_s": round(wall_s, 1),
        "train_time_s": round(sum(r["epoch_time_s"] for r in records), 1),
        "train_loss_main": final["train_loss_main"],
        "command": " ".join(["stimulative", *shown[1:]]).replace(str(REPO) + "/", ""),
        "machine": machine_info(args.threads), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    rec = benchmark_record("bench_ablation", rec, command=rec["command"], machine=rec["machine"])
    sio.write_record(rec, record_path(plan_name, name), indent=2)
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="r20_proxy", choices=list(PLANS))
    p.add_argument("--variants", nargs="+", help="variants to run (default: all of the plan)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data", default=str(REPO.parent / "shared/datasets/cifar10-jpeg.tar.xz"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stats-every", type=int, default=0, help="instrument every K steps (steps.jsonl)")
    p.add_argument("--runs", default=str(REPO / "benchmarks" / "runs" / "ablation"))
    p.add_argument("--list", action="store_true", help="print the plans and their variants")
    args = p.parse_args()
    if args.list:
        for name, plan in PLANS.items():
            print(f"{name}: {plan['setting']}")
            for v, (method, recipe, ov) in plan["variants"].items():
                print(f"  {v:<16}{method:<6}{recipe} {' '.join(ov)}")
        return
    if not Path(args.data).expanduser().exists():
        sys.exit(f"--data {args.data!r} does not exist (give the CIFAR-10 archive or folder)")
    plan = PLANS[args.plan]
    variants = args.variants or list(plan["variants"])
    unknown = [v for v in variants if v not in plan["variants"]]
    if unknown:
        sys.exit(f"unknown variants {unknown}; valid: {', '.join(plan['variants'])}")
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    queue = []
    for seed in args.seeds:  # seed-major: every variant gets one seed before any gets two
        for v in variants:
            name = f"{args.plan}_{v}_s{seed}"
            if record_path(args.plan, name).exists():
                continue
            method, recipe, overrides = plan["variants"][v]
            epochs = [int(o.split("=")[1]) for o in plan["common"] + overrides if o.startswith("epochs=")][-1]
            if finished_epochs(Path(args.runs) / name) == epochs:  # trained earlier, record not yet written
                cmd = build_command(plan, recipe, overrides, name, seed, args, [])
                write_record(args.plan, plan, v, method, seed, name, cmd, None, args)
                print(f"collected {name} (finished earlier)", flush=True)
                continue
            queue.append((v, seed, name))
    print(f"{len(queue)} runs to make ({args.jobs} at a time)", flush=True)
    env = dict(os.environ, TQDM_DISABLE="1")
    running: dict[str, tuple] = {}
    while queue or running:
        while queue and len(running) < args.jobs:
            v, seed, name = queue.pop(0)
            method, recipe, overrides = plan["variants"][v]
            cmd = build_command(plan, recipe, overrides, name, seed, args, [])
            log = Path(args.runs) / f"{name}.log"
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
            running[name] = (proc, v, method, seed, cmd, time.time(), log)
        time.sleep(5)
        for name, (_, v, method, seed, cmd, t0, _) in reap(running):
            rec = write_record(args.plan, plan, v, method, seed, name, cmd, time.time() - t0, args)
            print(f"[{time.strftime('%H:%M:%S')}] done  {name}: test {rec['test_acc']:.2f}% "
                  f"(1,1,1) {rec['test_acc_d1-1-1']}, {rec['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
