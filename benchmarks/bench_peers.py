"""Peers side by side (issue 19): ST / ST++ against stochastic depth, LayerDrop and depths trained alone, for the
main network and for every depth, at equal epochs and at equal time.

Setting: the ``r20_confirm`` setting of bench_ablation.py (CIFAR-10 ResNet-20, 5,000 training images, 2,000 test
images, 15 epochs, batch 128, one-cycle lr 0.1, BN re-estimated on 1,000 images); ``--setting`` grows the budget
(5k x 45 epochs, 15k x 15, 15k x 45) for the "as the budget grows" comparison. Every run goes through
``stimulative train`` (a shipped recipe + ``key=value`` overrides); when it ends, all 27 depth configurations of
its last checkpoint are measured as ``stimulative loafing --all --bn-recal 1000`` does (BN re-estimated per
configuration; ``--eval-run``) and their FLOPs counted, and one record is written to ``benchmarks/results/peers/<run>.json`` with ``setting``,
``method``, ``variant``, ``budget``, ``seed``, ``epochs``, ``test_acc``, ``train_s``, ``depth_acc``,
``depth_mflops`` and the commands. A run whose record exists is skipped; a run that trained but was not
measured is measured on the next invocation.

Equal time: ``--measure-times`` times one engine epoch of every cost class (CT, stochastic depth, LayerDrop, ST,
ST++ and its cheaper variants) on the same synthetic in-memory batches, interleaved and repeated (median), on one
thread, and writes ``step_times.json``; an equal-time variant trains for ``round(E * t(ST++) / t(its class))``
epochs, ``E`` the setting's epochs (15 for ``r20``). The ratio, not the wall clock of runs made beside other work, fixes the budget.

    python benchmarks/bench_peers.py --measure-times                 # once, on a quiet machine
    python benchmarks/bench_peers.py --seeds 0 1 --variants sd05 sd01 ld02 ld01
    python benchmarks/bench_peers.py --seeds 10 11 12                # every cell of the plan
    python benchmarks/bench_peers.py --setting r20_45ep --seeds 10 11 --variants ct stpp sd01
    python benchmarks/bench_peers.py --list

A running invocation keeps the code it started with: after changing this file (or the time measurements), stop
it and start it again; finished runs are skipped and a trained but unrecorded run is only evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ablation import CT, STPP, finished_epochs, read_metrics  # benchmarks/bench_ablation.py
from machine import reap, trained_at  # benchmarks/machine.py

from stimulative import io as sio
from stimulative.io import benchmark_record, machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "peers"
TIMES = RESULTS / "step_times.json"
ST = "cifar10_resnet20_st"
EPOCHS = 15
# name: (training images, epochs). "r20" is the r20_confirm setting of bench_ablation.py; the others grow the
# budget (issue 19, item 4: where would ST++ cross?)
SETTINGS = {"r20": (5000, 15), "r20_45ep": (5000, 45), "r20_15k": (15000, 15), "r20_15k_45ep": (15000, 45),
            "r20_full": (50000, 15)}
# issue 30: the full setting (all 50k training and 10k test images). Its equal-time reference is the cheaper ST++
# (subnet_fraction 0.5) at 15 epochs, and its time ratios come from a calibration on the real data through the
# same code path (--calibrate), not from synthetic batches; the other settings keep the paper-form ST++ as the
# reference and step_times.json.
FULL = {"r20_full"}
REFERENCE = {"r20_full": "ST++ frac50"}


def setting_text(name: str) -> str:
    images, epochs = SETTINGS[name]
    if name in FULL:
        return (f"CIFAR-10 ResNet-20, all {images // 1000}k training images, {epochs} ep, bs 128, one-cycle lr 0.1, "
                "all 10k test images, BN re-estimated on 1k images")
    return (f"CIFAR-10 ResNet-20, {images // 1000}k-image subset, {epochs} ep, bs 128, one-cycle lr 0.1, 2k test "
            "images, BN re-estimated on 1k images")


def common(name: str) -> list[str]:
    images, epochs = SETTINGS[name]
    subsets = [] if name in FULL else [f"data.train_subset={images}", "data.test_subset=2000"]
    return [*subsets, f"epochs={epochs}", "bn_recal_images=1000", "eval_depths=[[1,1,1]]"]


def run_name(setting: str, variant: str, seed: int) -> str:
    return f"peers_{variant}_s{seed}" if setting == "r20" else f"peers_{setting}_{variant}_s{seed}"


BN_IMAGES = 1000  # per depth configuration, as the setting's bn_recal_images


def sd(p: float) -> list[str]:  # stochastic depth, Huang et al.: 0 -> p over the blocks
    return [f"model.drop_path={p}", "model.drop_path_schedule=linear"]


def ld(p: float) -> list[str]:  # LayerDrop, Fan et al.: one rate for every block
    return [f"model.drop_path={p}", "model.drop_path_schedule=uniform"]


# the compute-saving forms (issue 30): one draw per block per batch, a dropped block is not computed, and the
# schedule covers only the blocks some evaluated sub-network removes (blocks 2-3 of every stage)
BATCH = ["model.drop_path_mode=batch", "model.drop_path_removable_only=true"]


def sdb(p: float) -> list[str]:
    return [*sd(p), *BATCH]


def ldb(p: float) -> list[str]:
    return [*ld(p), *BATCH]


def alone(d: int) -> list[str]:  # the depth (d, d, d) trained alone with CT
    return [f"model.kwargs={{blocks_per_stage: [{d}, {d}, {d}]}}"]


# cost classes: what one epoch costs (measured by --measure-times); an equal-time variant names its class
COST = {
    "CT": (CT, []), "SD": (CT, sd(0.5)), "LD": (CT, ld(0.2)), "ST": (ST, []), "ST++": (STPP, []),
    "ST++ frac50": (STPP, ["st.subnet_fraction=0.5"]), "ST++ every2": (STPP, ["st.subnet_every=2"]),
    "ST++ SD": (STPP, sd(0.5)),
    # per batch, the cost depends on the rate (the expected skipped compute)
    "SDb05": (CT, sdb(0.5)), "SDb01": (CT, sdb(0.1)), "LDb02": (CT, ldb(0.2)), "alone8": (CT, alone(1)),
}
# the classes --calibrate times (the full setting's reference and every class its plan gives equal time, plus the
# per-sample forms for the speed-up of the per-batch ones)
CALIBRATE = ["ST++ frac50", "CT", "SD", "SDb05", "SDb01", "LD", "LDb02", "alone8", "ST++"]
# name: (method, recipe, overrides, budget, cost class or None for equal epochs)
VARIANTS: dict[str, tuple[str, str, list[str], str, str | None]] = {
    "ct": ("CT", CT, [], "equal epochs", None),
    "sd05": ("stochastic depth", CT, sd(0.5), "equal epochs", None),
    "sd01": ("stochastic depth", CT, sd(0.1), "equal epochs", None),
    "ld02": ("LayerDrop", CT, ld(0.2), "equal epochs", None),
    "ld01": ("LayerDrop", CT, ld(0.1), "equal epochs", None),
    "st": ("ST", ST, [], "equal epochs", None),
    "stpp": ("ST++", STPP, [], "equal epochs", None),
    "alone8": ("alone", CT, alone(1), "equal epochs", None),
    "alone14": ("alone", CT, alone(2), "equal epochs", None),
    # given ST++'s time
    "ct_time": ("CT", CT, [], "equal time", "CT"),
    "sd05_time": ("stochastic depth", CT, sd(0.5), "equal time", "SD"),
    "sd01_time": ("stochastic depth", CT, sd(0.1), "equal time", "SD"),
    "ld02_time": ("LayerDrop", CT, ld(0.2), "equal time", "LD"),
    "ld01_time": ("LayerDrop", CT, ld(0.1), "equal time", "LD"),
    # ST's best chances at equal time: combined with stochastic depth, and with a cost lever
    "stpp_sd_time": ("ST++", STPP, sd(0.5), "equal time", "ST++ SD"),
    "stpp_frac50_time": ("ST++", STPP, ["st.subnet_fraction=0.5"], "equal time", "ST++ frac50"),
    "stpp_every2_time": ("ST++", STPP, ["st.subnet_every=2"], "equal time", "ST++ every2"),
    # the full setting (issue 30): the cheaper ST++ at 15 epochs is the reference; the peers in their per-batch
    # form and ResNet-8 alone get its measured time (their names say "_time"; ct_time there is CT at its time)
    "stpp_frac50": ("ST++", STPP, ["st.subnet_fraction=0.5"], "equal epochs", None),
    "sdb05_time": ("stochastic depth (batch)", CT, sdb(0.5), "equal time", "SDb05"),
    "sdb01_time": ("stochastic depth (batch)", CT, sdb(0.1), "equal time", "SDb01"),
    "ldb02_time": ("LayerDrop (batch)", CT, ldb(0.2), "equal time", "LDb02"),
    "alone8_time": ("alone", CT, alone(1), "equal time", "alone8"),
}
# the full setting's plan
# (the reference first: its time is what the equal-time runs are checked against)
FULL_PLAN = ["stpp_frac50", "ct", "sdb05_time", "ct_time", "sdb01_time", "ldb02_time", "alone8_time", "stpp"]
# the peers at the cheaper ST++'s time: the best 3-seed front among them joins it for seeds 13-14 (--deciding-peer)
FULL_PEERS = ["sdb05_time", "sdb01_time", "ldb02_time"]
# seeds 0-1 choose each peer's rate and ST++'s cost lever (as lambda = 1/N was chosen); 10-12 are the claim
TUNING = ["sd05", "sd01", "ld02", "ld01", "stpp_frac50_time", "stpp_every2_time"]


TIMES_UPDATE = RESULTS / "step_times_update.json"  # a later measurement of some classes (--classes)


def time_ratios() -> dict[str, float]:
    """t(ST++) / t(class) from step_times.json (the epochs multiplier of an equal-time variant). Classes measured
    again later (``--measure-times --classes ...``, step_times_update.json) take their cost relative to CT from
    that measurement, times CT's time in the full one."""
    if not TIMES.exists():
        sys.exit(f"{TIMES.relative_to(REPO)} is missing: run python benchmarks/bench_peers.py --measure-times first")
    times = dict(json.loads(TIMES.read_text())["epoch_s"])
    if TIMES_UPDATE.exists():  # per class: its cost relative to CT in the latest measurement that timed it
        for k, v in json.loads(TIMES_UPDATE.read_text())["cost_x_ct"].items():
            if k not in ("CT", "ST++"):
                times[k] = times["CT"] * v
    # every class does CT's work and more (a drop path computes every block): a measurement below CT is noise
    times = {k: max(v, times["CT"]) for k, v in times.items()}
    return {k: times["ST++"] / v for k, v in times.items()}


def calibration_path(setting: str) -> Path:
    return RESULTS / f"calibration_{setting}.json"


def calibrated_ratios(setting: str) -> dict[str, float]:
    """t(reference) / t(class) per image from the setting's calibration (--calibrate)."""
    path = calibration_path(setting)
    if not path.exists():
        sys.exit(f"{path.relative_to(REPO)} is missing: run python benchmarks/bench_peers.py --calibrate "
                 f"--setting {setting} first")
    per_image = json.loads(path.read_text())["s_per_image"]
    ref = per_image[REFERENCE[setting]]
    return {k: ref / v for k, v in per_image.items()}


def variant_epochs(cost: str | None, setting: str = "r20") -> tuple[int, float | None]:
    epochs = SETTINGS[setting][1]
    if cost is None:
        return epochs, None
    ratio = calibrated_ratios(setting)[cost] if setting in FULL else time_ratios()[cost]
    return max(1, round(epochs * ratio)), round(ratio, 3)


def train_command(variant: str, name: str, seed: int, args: argparse.Namespace) -> list[str]:
    _, recipe, overrides, _, cost = VARIANTS[variant]
    epochs, _ = variant_epochs(cost, args.setting)
    return [sys.executable, "-m", "stimulative", "train", str(REPO / "recipes" / f"{recipe}.yaml"), f"name={name}",
            f"out_dir={args.runs}", f"data.root={args.data}", *common(args.setting), *overrides, f"epochs={epochs}",
            f"seed={seed}", f"threads={args.threads}", "device=cpu", "eval_every=1000"]


def eval_command(run_dir: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--eval-run", str(run_dir)]


def evaluate_run(run_dir: Path) -> Path:
    """Every ordered depth configuration of the run's last checkpoint, BN re-estimated on BN_IMAGES training
    images per configuration (as ``stimulative loafing --all --bn-recal 1000``, without the extra pass with the
    saved statistics); writes ``run_dir/depths/loafing.json``."""
    from stimulative.analysis.loafing import subnetwork_accuracy
    from stimulative.runs import measure_selected, open_run

    def bn_only(*a, **k):
        return subnetwork_accuracy(*a, **k, own_bn=False)

    run = open_run(run_dir / "last.pt")
    rows = measure_selected([run], bn_only, all_configs=True, bn_images=BN_IMAGES, progress=False)
    out = run_dir / "depths" / "loafing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "settings": {"bn_recal_images": BN_IMAGES}}, indent=1) + "\n")
    return out


def plan_mismatch(run_dir: Path, cmd: list[str]) -> str:
    """The ``key: saved -> planned`` differences between an existing run dir's config and the config the planned
    command resolves to (its recipe as it is now plus its overrides), every key but the free ones
    (``stimulative.train.resume.FREE``: where and how a run executes and evaluates). A re-measured time ratio
    changes an equal-time run's epochs, a changed recipe its method: either would be recorded as the current plan."""
    import yaml

    from stimulative.train.config import config_to_dict, load_config
    from stimulative.train.resume import FREE, _flat

    path = run_dir / "config.yaml"
    if not path.exists():
        return ""
    saved = _flat(yaml.safe_load(path.read_text()))
    i = cmd.index("train")
    planned = _flat(config_to_dict(load_config(cmd[i + 1], [c for c in cmd[i + 2:] if "=" in c])))
    if planned.get("model.num_classes") is None:  # null means "from the dataset", as the run resolved it
        planned["model.num_classes"] = saved.get("model.num_classes")
    return "; ".join(f"{k}: {saved[k]} -> {v}" for k, v in planned.items()
                     if k not in FREE and k in saved and saved[k] != v)


def shown(cmd: list[str]) -> str:
    if cmd[0] != sys.executable:
        text = " ".join(cmd)
    elif cmd[1] == "-m":
        text = " ".join(["stimulative", *cmd[3:]])
    else:
        text = " ".join(["python", *cmd[1:]])
    return text.replace(str(REPO) + "/", "")


_FLOPS: dict[tuple, float] = {}


def depth_mflops(run_dir: Path, configs: list[str]) -> dict[str, float]:
    """MFLOPs of each configuration (convolutions and matmuls, 2 per MAC) of the run's model, 32 px input."""
    from stimulative.deploy.pareto import count_flops
    from stimulative.runs import _load

    loaded = _load(run_dir / "last.pt")
    key = (type(loaded.model).__name__, tuple(loaded.ed.full_depths))
    out = {}
    for c in configs:
        if (key, c) not in _FLOPS:
            _FLOPS[(key, c)] = count_flops(loaded.ed.extract([int(v) for v in c.split(",")]), 32) / 1e6
        out[c] = round(_FLOPS[(key, c)], 3)
    return out


def fit_of(final: dict) -> dict:
    """The last epoch's training accuracy (augmented, with drops) and test loss: how far the main network
    overfits at this budget (what report.py's overfitting table reads)."""
    return {"train_acc": final.get("train_acc"), "test_loss": final.get("test_loss")}


def add_fit(runs: Path) -> None:
    """Add ``train_acc``/``test_loss`` to records written before they were recorded, from their run dirs."""
    for path in sorted(RESULTS.glob("*.json")):
        rec = json.loads(path.read_text())
        run_dir = runs / path.stem
        if "variant" not in rec or "train_acc" in rec or not (run_dir / "metrics.jsonl").exists():
            continue
        final = read_metrics(run_dir)[-1]
        if final["epoch"] != rec["epochs"]:
            print(f"skip {path.name}: its run dir ended at epoch {final['epoch']}, the record has {rec['epochs']}")
            continue
        rec.update(fit_of(final))
        write_json(rec, path, indent=2)
        print(f"{path.name}: train acc {rec['train_acc']}, test loss {rec['test_loss']}")


def write_record(variant: str, seed: int, name: str, args: argparse.Namespace, train_cmd: list[str]) -> dict | None:
    run_dir = Path(args.runs) / name
    records = read_metrics(run_dir)
    final = records[-1]
    depths = json.loads((run_dir / "depths" / "loafing.json").read_text())
    rows = [r for r in depths["rows"] if r["kind"] == "inside"]
    method, _, _, budget, cost = VARIANTS[variant]
    epochs, ratio = variant_epochs(cost, args.setting)
    images = SETTINGS[args.setting][0]
    rec = {
        "setting": setting_text(args.setting), "setting_name": args.setting, "train_images": images,
        "image_epochs": images * final["epoch"], "variant": variant, "method": method, "budget": budget, "seed": seed,
        "epochs": final["epoch"], "time_ratio": ratio, "test_acc": final["test_acc"], **fit_of(final),
        "train_s": round(sum(r["epoch_time_s"] for r in records), 1),
        "epoch_s": round(sum(r["epoch_time_s"] for r in records) / final["epoch"], 2),
        # CPU time (the engine's epoch_cpu_s; absent in runs made before it was recorded): parity on a shared machine
        "train_cpu_s": round(sum(r["epoch_cpu_s"] for r in records), 1)
        if all("epoch_cpu_s" in r for r in records) else None,
        "depth_acc": {r["depths"]: r["acc_bn"] for r in rows},
        "depth_mflops": depth_mflops(run_dir, [r["depths"] for r in rows]),
        "command": shown(train_cmd), "eval_command": shown(eval_command(run_dir)),
        "trained_at": trained_at(run_dir / "last.pt"), "machine": machine_info(args.threads),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if rec["epochs"] != epochs:  # never record a run of another length than the plan's
        print(f"NOT recorded {name}: it trained {rec['epochs']} epochs, the plan wants {epochs}", flush=True)
        return None
    rec = benchmark_record("bench_peers", rec, command=rec["command"], wall_s=rec["train_s"], machine=rec["machine"])
    sio.write_record(rec, RESULTS / f"{name}.json", indent=2)
    return rec


def measure_times(args: argparse.Namespace) -> None:
    """One engine epoch per cost class on synthetic in-memory batches, interleaved, median of --repeats."""
    import torch

    from stimulative.train import train
    from stimulative.train.config import load_config

    torch.set_num_threads(args.threads)
    os.environ["TQDM_DISABLE"] = "1"
    tmp = tempfile.mkdtemp(prefix="bench_peers_")

    def epoch(cls: str, images: int) -> float:
        recipe, overrides = COST[cls]
        cfg = load_config(REPO / "recipes" / f"{recipe}.yaml", [
            *overrides, "data.name=synthetic", f"data.train_subset={images}", "data.test_subset=128", "epochs=1",
            "eval_depths=[]", "bn_recal_images=0", "device=cpu", f"threads={args.threads}", f"out_dir={tmp}",
            f"name=t{time.monotonic_ns()}"])
        return float(train(cfg)["final"]["epoch_time_s"])

    classes = args.classes or list(COST)
    unknown = [c for c in classes if c not in COST]
    if unknown or (args.classes and "CT" not in classes):
        sys.exit(f"--classes must include CT and name cost classes among {', '.join(COST)}; got {classes}")
    for cls in classes:  # untimed warm-up of every code path
        epoch(cls, 256)
    times: dict[str, list[float]] = {c: [] for c in classes}
    for r in range(args.repeats):
        for cls in classes:
            times[cls].append(epoch(cls, args.images))
            print(f"repeat {r + 1}/{args.repeats} {cls:<12} {times[cls][-1]:6.2f} s", flush=True)
    med = {c: statistics.median(v) for c, v in times.items()}
    out = {"command": "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:]),
           "images_per_epoch": args.images, "batch_size": 128, "threads": args.threads,
           "epoch_s": {c: round(v, 3) for c, v in med.items()},
           "epoch_s_all_repeats": {c: [round(x, 3) for x in v] for c, v in times.items()},
           "cost_x_ct": {c: round(v / med["CT"], 3) for c, v in med.items()},
           "equal_time_epochs_at_15": {c: max(1, round(EPOCHS * med["ST++"] / v)) for c, v in med.items()}
           if "ST++" in med else None,
           "machine": machine_info(args.threads), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = TIMES_UPDATE if args.classes else TIMES
    if args.classes and TIMES_UPDATE.exists():  # merge: classes timed earlier keep their latest measurement
        old = json.loads(TIMES_UPDATE.read_text())
        out["cost_x_ct"] = {**old["cost_x_ct"], **out["cost_x_ct"]}
        out["earlier"] = [*old.get("earlier", []), {k: v for k, v in old.items() if k != "earlier"}]
    elif not args.classes and TIMES_UPDATE.exists():  # a full measurement supersedes the partial ones
        TIMES_UPDATE.rename(TIMES_UPDATE.with_name(f"step_times_update_before_{time.strftime('%Y%m%d%H%M')}.json"))
    sio.write_record(benchmark_record("bench_peers", out, command=out["command"], setting="step times",
                                      machine=out["machine"]), target, indent=2)
    print(json.dumps(out["cost_x_ct"]), "\n", json.dumps(out["equal_time_epochs_at_15"]), f"\n-> {target}")


def calibrate(args: argparse.Namespace) -> None:
    """Time one training epoch of every class in CALIBRATE on --images real training images of the setting's
    data, through ``stimulative train`` in a subprocess (the code path and data pipeline of the runs), interleaved
    over --repeats rounds; the median seconds per image fix the full setting's equal-time epochs."""
    if args.setting not in FULL:
        sys.exit(f"--calibrate is for the settings {sorted(FULL)}; the others use --measure-times")
    tmp = Path(tempfile.mkdtemp(prefix="bench_peers_cal_"))
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    times: dict[str, list[float]] = {c: [] for c in CALIBRATE}

    cpu: dict[str, list[float]] = {c: [] for c in CALIBRATE}

    def epoch(cls: str, images: int, r: int) -> float:
        recipe, overrides = COST[cls]
        name = f"cal{r}_{cls.replace(' ', '_').replace('+', 'p')}_{images}"
        cmd = [sys.executable, "-m", "stimulative", "train", str(REPO / "recipes" / f"{recipe}.yaml"), f"name={name}",
               f"out_dir={tmp}", f"data.root={args.data}", *overrides, f"data.train_subset={images}",
               "data.test_subset=128", "epochs=1", "eval_depths=[]", "bn_recal_images=0", "device=cpu",
               f"threads={args.threads}", "eval_every=1000", "seed=0"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        last = read_metrics(tmp / name)[-1]
        if r >= 0 and "epoch_cpu_s" in last:
            cpu[cls].append(float(last["epoch_cpu_s"]))
        return float(last["epoch_time_s"])

    epoch("CT", 128, -1)  # untimed warm-up (page cache, the decoded-data cache)
    for r in range(args.repeats):
        for cls in CALIBRATE:
            times[cls].append(epoch(cls, args.images, r))
            print(f"repeat {r + 1}/{args.repeats} {cls:<12} {times[cls][-1]:7.2f} s", flush=True)
    # the cost of a class is its CPU time per epoch where the engine recorded it (little moved by other jobs on
    # the shared machine; wall time is kept beside it), else its wall time
    use_cpu = all(len(v) == len(times[c]) for c, v in cpu.items())
    med = {c: statistics.median(v) for c, v in (cpu if use_cpu else times).items()}
    ref = med[REFERENCE[args.setting]]
    epochs = SETTINGS[args.setting][1]
    out = {"command": "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:]), "setting": args.setting,
           "images_per_epoch": args.images, "threads": args.threads, "reference": REFERENCE[args.setting],
           "time": "cpu" if use_cpu else "wall",
           "epoch_s_all_repeats": {c: [round(x, 3) for x in v] for c, v in times.items()},
           "epoch_cpu_s_all_repeats": {c: [round(x, 3) for x in v] for c, v in cpu.items()} if use_cpu else None,
           "s_per_image": {c: round(v / args.images, 6) for c, v in med.items()},
           "cost_x_ct": {c: round(v / med["CT"], 3) for c, v in med.items()},
           "equal_time_epochs": {c: max(1, round(epochs * ref / v)) for c, v in med.items()},
           "machine": machine_info(args.threads), "load_avg": list(os.getloadavg()),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    sio.write_record(benchmark_record("bench_peers", out, command=out["command"], machine=out["machine"]),
                     calibration_path(args.setting), indent=2)
    print(json.dumps(out["cost_x_ct"]), "\n", json.dumps(out["equal_time_epochs"]),
          f"\n-> {calibration_path(args.setting)}")


# the cost class of an equal-epoch variant (an equal-time one names its own): for --status's estimate of what is
# left when no record of the variant has landed yet
EPOCH_CLASS = {"ct": "CT", "stpp": "ST++", "stpp_frac50": "ST++ frac50", "alone8": "alone8"}


def cpu_per_epoch(setting: str, variant: str) -> float | None:
    """Process CPU seconds of one training epoch of ``variant``: the median of its landed records' ``train_cpu_s``
    per epoch in ``setting``, else the setting's calibration (CPU s per image x training images), else None."""
    seen = [r["train_cpu_s"] / r["epochs"] for f in sorted(RESULTS.glob(f"{run_name(setting, variant, 0)[:-1]}*.json"))
            if (r := json.loads(f.read_text())).get("train_cpu_s") and r.get("variant") == variant]
    if seen:
        return statistics.median(seen)
    cls = VARIANTS[variant][4] or EPOCH_CLASS.get(variant)
    path = calibration_path(setting)
    if cls is None or not path.exists():
        return None
    per_image = json.loads(path.read_text())["s_per_image"].get(cls)
    return per_image * SETTINGS[setting][0] if per_image else None


def plan_status(setting: str, variants: list[str], seeds: list[int], runs: Path) -> tuple[list[str], float, int]:
    """One line per variant, a cell per seed: the record's main accuracy once it landed, ``k/N ep`` while its run
    dir holds ``k`` of its ``N`` epochs, ``eval`` when trained but not yet measured, ``-`` when not started; then the
    single-core training hours left (``cpu_per_epoch`` x epochs left; evaluation not counted) and the runs left."""
    lines, hours, left = [f"| variant | {' | '.join(f'seed {s}' for s in seeds)} |",
                          "|---|" + "---|" * len(seeds)], 0.0, 0
    unknown = []
    for v in variants:
        epochs = variant_epochs(VARIANTS[v][4], setting)[0]
        per_epoch = cpu_per_epoch(setting, v)  # once per variant: it reads the variant's records
        cells = []
        for seed in seeds:
            name = run_name(setting, v, seed)
            record = RESULTS / f"{name}.json"
            if record.exists():
                cells.append(f"{json.loads(record.read_text())['test_acc']:.2f}")
                continue
            left += 1
            try:
                done = max(int(r["epoch"]) for r in read_metrics(runs / name) if "epoch" in r)
            except (FileNotFoundError, ValueError, json.JSONDecodeError):
                done = 0
            cells.append("eval" if done >= epochs else f"{done}/{epochs} ep" if done else "-")
            if per_epoch is None:
                unknown.append(name)
            else:
                hours += max(0, epochs - done) * per_epoch / 3600
        lines.append(f"| {v} | {' | '.join(cells)} |")
    if unknown:
        lines.append(f"no CPU time per epoch known (no record, no calibration) for: {', '.join(unknown)}")
    return lines, hours, left


def status(args: argparse.Namespace, variants: list[str]) -> None:
    lines, hours, left = plan_status(args.setting, variants, args.seeds, Path(args.runs))
    print(f"{setting_text(args.setting)}; records in {RESULTS.relative_to(REPO)}, run dirs in {args.runs}")
    print("\n".join(lines))
    print(f"{left} runs left: about {hours:.1f} single-core hours of training (from the landed records' CPU time per "
          "epoch, the calibration where none landed; each run's evaluation comes on top)")


def deciding_peer(setting: str, seeds: list[int]) -> str:
    """The peer of ``FULL_PEERS`` with the best mean front area over ``seeds`` (every one of them landed): with the
    cheaper ST++ it is the pair that decides the front, and gets seeds 13-14. Exits naming the missing records."""
    from stimulative.deploy.pareto import front_area

    fronts, missing = {}, []
    for v in FULL_PEERS:
        paths = [RESULTS / f"{run_name(setting, v, s)}.json" for s in seeds]
        missing += [f.name for f in paths if not f.exists()]
        if not missing:
            records = [json.loads(f.read_text()) for f in paths]
            fronts[v] = statistics.mean(front_area(r["depth_acc"], r["depth_mflops"]) for r in records)
    if missing:
        sys.exit(f"the deciding peer needs every peer at seeds {seeds}; not landed: {', '.join(missing)}")
    return max(fronts, key=fronts.get)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", help="variants to run (default: all but the seed-0/1 tuning ones)")
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    p.add_argument("--setting", default="r20", choices=list(SETTINGS), help="training images x epochs")
    p.add_argument("--data", default=str(REPO.parent / "shared/datasets/cifar10-jpeg.tar.xz"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default=str(REPO / "benchmarks" / "runs" / "peers"))
    p.add_argument("--list", action="store_true", help="print the variants")
    p.add_argument("--deciding-peer", action="store_true", help="print the peer at equal time with the best mean "
                   "front over --seeds (the full setting's pair for seeds 13-14)")
    p.add_argument("--status", action="store_true", help="what has landed, what is training (--runs) and the CPU "
                   "hours left, for --setting, --seeds and --variants (default: the setting's plan)")
    p.add_argument("--add-fit", action="store_true", help="add train_acc/test_loss to older records from their "
                   "run dirs (--runs)")
    p.add_argument("--eval-run", metavar="RUN_DIR", help="measure every depth of one finished run (internal)")
    p.add_argument("--measure-times", action="store_true", help="measure the epoch time of every cost class")
    p.add_argument("--repeats", type=int, default=3, help="--measure-times: interleaved repeats")
    p.add_argument("--images", type=int, default=1280, help="--measure-times: images per timed epoch")
    p.add_argument("--calibrate", action="store_true", help="time every cost class of a full setting on its real "
                   "data (--images, --repeats), for its equal-time epochs")
    p.add_argument("--classes", nargs="+", help="--measure-times: only these cost classes (with CT), written to "
                   "step_times_update.json and used for them instead of step_times.json")
    args = p.parse_args()
    if args.list:
        for v, (method, recipe, ov, budget, _) in VARIANTS.items():
            print(f"  {v:<18}{method:<18}{budget:<14}{recipe} {' '.join(ov)}")
        return
    if args.eval_run:
        print(f"-> {evaluate_run(Path(args.eval_run))}")
        return
    if args.measure_times:
        measure_times(args)
        return
    if args.calibrate:
        if not Path(args.data).expanduser().exists():
            sys.exit(f"--data {args.data!r} does not exist (give the CIFAR-10 archive or folder)")
        calibrate(args)
        return
    if args.deciding_peer:
        print(deciding_peer(args.setting, args.seeds))
        return
    if args.add_fit:
        add_fit(Path(args.runs))
        return
    default = FULL_PLAN if args.setting in FULL else [v for v in VARIANTS if v not in TUNING]
    variants = args.variants or default
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    if args.status:
        status(args, variants)
        return
    if not Path(args.data).expanduser().exists():
        sys.exit(f"--data {args.data!r} does not exist (give the CIFAR-10 archive or folder)")
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    queue = []
    for seed in args.seeds:  # seed-major: every variant gets one seed before any gets two
        for v in variants:
            name = run_name(args.setting, v, seed)
            record = RESULTS / f"{name}.json"
            if not record.exists():
                queue.append((v, seed, name))
                continue
            planned = variant_epochs(VARIANTS[v][4], args.setting)[0]
            kept = json.loads(record.read_text()).get("epochs")
            if kept != planned:  # e.g. re-measured time ratios: the table would show it as another line
                print(f"NOTE {name}: its record has {kept} epochs, the plan now gives {planned}; move {record} "
                      "(and its run dir) away to make it again", flush=True)
    print(f"{len(queue)} runs to make ({args.jobs} at a time)", flush=True)
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    running: dict[str, tuple] = {}
    while queue or running:
        while queue and len(running) < args.jobs:
            v, seed, name = queue.pop(0)
            run_dir = Path(args.runs) / name
            cmd = train_command(v, name, seed, args)
            epochs = variant_epochs(VARIANTS[v][4], args.setting)[0]
            clash = plan_mismatch(run_dir, cmd)
            if clash:
                print(f"[{time.strftime('%H:%M:%S')}] SKIP {name}: its run dir was made with {clash}; move "
                      f"{run_dir} away to make it again", flush=True)
                continue
            stage = "eval" if finished_epochs(run_dir) == epochs else "train"
            if stage == "train" and run_dir.exists():
                cmd.append("resume=auto")  # an interrupted run continues
            todo = [cmd, eval_command(run_dir)] if stage == "train" else [eval_command(run_dir)]
            log = Path(args.runs) / f"{name}.log"
            script = " && ".join(" ".join(f"'{c}'" for c in t) for t in todo)
            print(f"[{time.strftime('%H:%M:%S')}] start {name} ({stage}, {epochs} epochs)", flush=True)
            proc = subprocess.Popen(["bash", "-c", script], stdout=open(log, "a"), stderr=subprocess.STDOUT,
                                    env=env)
            running[name] = (proc, v, seed, train_command(v, name, seed, args), log)
        time.sleep(5)
        for name, (_, v, seed, cmd, _) in reap(running):
            rec = write_record(v, seed, name, args, cmd)
            if rec is None:
                continue
            small = rec["depth_acc"].get("1,1,1")
            print(f"[{time.strftime('%H:%M:%S')}] done  {name}: test {rec['test_acc']:.2f}% (1,1,1) {small}, "
                  f"{rec['train_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
