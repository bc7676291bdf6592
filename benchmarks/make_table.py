"""Regenerate the README's results section from benchmarks/results/*.json.

Replaces everything between ``<!-- results:start -->`` and ``<!-- results:end -->`` in README.md with tables
built only from the JSON files the benchmark scripts wrote (and says which command wrote each).

    python benchmarks/make_table.py            # rewrite README.md
    python benchmarks/make_table.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _machine(doc: dict) -> str:
    m = doc["machine"]
    load = m.get("load_average_at_start") or m.get("load_average")
    return (f"{m.get('cpu_count')} CPU cores, torch {m.get('torch')}, {m.get('date', '')[:10]}"
            + (f", load average at start {load[0]:.1f}" if load else ""))


def accuracy_section(doc: dict) -> list[str]:
    c = doc["config"]
    subset = f"{c['subset']:,}-image stratified training subset" if c["subset"] else "all 50,000 training images"
    test = f"{c['test_subset']:,} test images" if c["test_subset"] else "the full 10,000-image test set"
    lines = [
        f"### Accuracy: {' vs '.join(dict.fromkeys(r['method'].split(',')[0] for r in doc['runs'].values()))} "
        f"(CIFAR-10, ResNet-20, {c['subset'] or 50000:,} training images, {c['epochs']} epochs)",
        "",
        f"`{doc['command']}` — {subset}, {test}, {c['epochs']} epochs"
        + (" (\"CT, equal time\": as many epochs as fit in ST++'s training time)"
           if any(r["method"] == "CT, equal time" for r in doc["runs"].values()) else "")
        + f", batch 128, one-cycle lr 0.1, seed(s) {', '.join(map(str, c['seeds']))}, "
        f"{c['threads']} thread(s) per run, {c['jobs']} run(s) at a time (train times are wall-clock on a "
        "shared 2-core machine); "
        f"{_machine(doc)}; whole benchmark {doc['total_time_s'] / 60:.0f} min. Sub-networks are evaluated inside "
        f"the trained network with BN statistics re-estimated on {c['bn_recal']} training images each: (1,1,1) "
        "and (2,2,2) on the same test images as the full network at the end of training; the mean of the other "
        f"26 depth configurations and the mean drop (full minus that mean) from the loafing table on "
        f"{c['loafing_test_subset'] or 10000:,} test images.",
        "",
        "| method | epochs | train time (min) | test acc (%) | (1,1,1) (%) | (2,2,2) (%) | mean of 26 sub-nets (%) "
        "| mean drop (pts) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"].values():
        lo = r.get("loafing") or {}
        seed = f" (seed {r['seed']})" if len(c["seeds"]) > 1 else ""
        lines.append(f"| {r['method']}{seed} | {r['epochs']} | {r['train_time_s'] / 60:.1f} | {_f(r['test_acc'])} | "
                     f"{_f(r.get('test_acc_d1-1-1'))} | {_f(r.get('test_acc_d2-2-2'))} | "
                     f"{_f(lo.get('mean_sub_acc_bn'))} | {_f(lo.get('mean_drop_bn'), 1)} |")
    return lines


def throughput_section(doc: dict) -> list[str]:
    c, ips = doc["config"], doc["img_per_s"]
    lines = [
        "### Throughput (CPU, fp32, CIFAR ResNet-20, batch 128, data in memory)",
        "",
        f"`{doc['command']}` — {c['threads']} thread(s), one epoch of {c['images_per_epoch']:,} images per "
        f"measurement, median of {c['repeats']} interleaved repeats (training loops) and "
        f"{c.get('st_repeats', c['repeats'])} (`StimulativeStep` settings); {_machine(doc)}.",
        "",
        "| training loop | img/s |",
        "|---|---|",
        f"| minimal hand-written PyTorch loop | {ips['plain loop']:.1f} |",
        f"| `stimulative` engine, CT | {ips['engine CT']:.1f} |",
        f"| minimal loop, channels_last | {ips['plain loop, channels_last']:.1f} |",
        "",
        f"Engine overhead over the plain loop: **{doc['engine_overhead_pct']:+.1f}%** (target ≤ 5%"
        + ("; negative: the engine was not slower, and single epochs here vary by several percent with the "
           "order the settings run in" if doc["engine_overhead_pct"] < 0 else "") + "). "
        f"channels_last is ×{doc['channels_last_speedup']:.2f} faster than contiguous tensors on this CPU: pass "
        "`channels_last=true` to `stimulative train`.",
    ]
    if "st_cost_vs_ct" in doc:
        lines += ["", "| `StimulativeStep` setting | img/s | cost × CT | naive cost (1+N) × CT |", "|---|---|---|---|"]
        for name, row in doc["st_cost_vs_ct"].items():
            lines.append(f"| {name} | {ips[name]:.1f} | {row['cost_x_ct']:.2f} | {row['naive_cost_x_ct']} |")
        n6 = [r for r in doc["st_cost_vs_ct"].values() if r["num_subnets"] == 6]
        if n6:
            best = min(n6, key=lambda r: r["cost_x_ct"])
            lines += ["", f"Sub-networks are shallower than the full network and smaller inputs cut their cost further: "
                      f"6 sub-networks with inputs ≥ {best['min_input_scale']}× cost {best['cost_x_ct']:.2f}× CT "
                      "instead of the naive 7×."]
    return lines


def data_section(doc: dict) -> list[str]:
    d, aug, v = doc["decode"], doc["tensor_augment"], doc["verdict"]
    steps = {s["model"]: s for s in doc["train_step"]}
    loaders = doc["imagenet_loader"]
    lines = [
        "### Data path",
        "",
        f"`python benchmarks/bench_data.py` — {_machine(doc)}.",
        "",
        "| stage | images/s |",
        "|---|---|",
        f"| decode the CIFAR-10 JPEG archive once ({d['images']:,} images, {d['decode_workers']} workers; "
        f"cached reload {d['cached_reload_s']:.1f} s) | {d['decode_images_per_s']:.0f} |",
        f"| in-memory CIFAR augmentation on batches (pad-crop + flip) | {aug['images_per_s']:.0f} |",
        f"| CIFAR ResNet-20 CT training step (the consumer) | {steps['cifar_resnet20']['images_per_s']:.0f} |",
    ]
    for lo in loaders:
        ua = " + UniformAugment" if lo["uniform_augment"] else ""
        lines.append(f"| ImageNet pipeline{ua}, {lo['input_size']} px, {lo['workers']} workers | "
                     f"{lo['images_per_s']:.0f} |")
    if "resnet18" in steps:
        lines.append(f"| ResNet-18 224 px training step (the consumer) | {steps['resnet18']['images_per_s']:.1f} |")
    lines += ["", f"In-memory augmentation is {v['tensor_augment_over_resnet20_step']:.0f}× faster than the "
              "ResNet-20 step it feeds: the loader is not the bottleneck on CPU."]
    return lines


def build() -> str:
    parts: list[list[str]] = []
    accuracy = sorted(p.stem for p in RESULTS.glob("bench_accuracy*.json") if not p.stem.endswith("_loafing"))
    for name, fn in [*((a, accuracy_section) for a in accuracy), ("bench_throughput", throughput_section),
                     ("bench_data", data_section)]:
        doc = _load(name)
        if doc is not None:
            parts.append(fn(doc))
    body = "\n\n".join("\n".join(p) for p in parts) if parts else "_No benchmark results yet._"
    return (f"{START}\n<!-- generated by `python benchmarks/make_table.py` from benchmarks/results/*.json; "
            f"do not edit by hand -->\n\n{body}\n\n{END}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = p.parse_args()
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + build() + tail
    if args.check:
        if new != text:
            print(f"{readme} is out of date: run python benchmarks/make_table.py")
            return 1
        print(f"{readme} results section is up to date")
        return 0
    readme.write_text(new)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
