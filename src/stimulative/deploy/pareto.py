"""Accuracy / cost trade-off of the sub-networks of one trained model, and picking one under a budget.

For each depth configuration (all of a small ordered space, a seeded sample, or a greedy walk that removes one
block at a time choosing the least accuracy loss) ``profile_config`` cuts the sub-network out, re-estimates its
BatchNorm statistics, measures test accuracy, parameters, FLOPs and CPU latency. ``pareto_front`` marks the
configurations that no other beats on both accuracy and cost; ``select_under_budget`` picks the most accurate
one under a latency or FLOPs budget.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` for one image at the evaluation size: it
counts the matrix multiplications and convolutions (2 FLOPs per multiply-accumulate), not BatchNorm, ReLU,
pooling or additions; ``macs = flops / 2``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.elastic import ElasticDepth, format_depths
from ..core.evaluation import evaluate
from ..core.sampling import SampleSpace
from ..io import write_csv, write_json
from ..runs import Run
from .export import count_parameters, extract_subnetwork

__all__ = [
    "STRATEGIES", "count_flops", "measure_latency", "forward_times", "candidate_configs", "greedy_walk", "profile_config",
    "pareto_front", "front_area", "mark_fronts", "select_under_budget", "write_table", "plot_pareto", "pareto_table",
]

STRATEGIES = ("auto", "all", "sample", "greedy")
ALL_LIMIT = 64  # "auto" enumerates spaces up to this size, else walks greedily


def count_flops(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """FLOPs of one forward pass of one ``channels x input_size x input_size`` image (matmuls and convs only).

    Example:
        >>> count_flops(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), input_size=2)   # 2 * (3*2*2) * 5
        120
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, input_size, input_size))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, input_shape: Sequence[int], repeats: int = 10, warmup: int = 2,
                    max_seconds: float | None = None) -> float:
    """Median wall-clock time (ms) of one forward pass, in eval mode under ``torch.inference_mode``.

    Same arguments as ``forward_times``.

    Example:
        >>> ms = measure_latency(nn.Conv2d(3, 8, 3), (1, 3, 32, 32), repeats=3, warmup=1)
        >>> ms > 0
        True
    """
    return float(statistics.median(forward_times(model, input_shape, repeats, warmup, max_seconds)))


def forward_times(model: nn.Module, input_shape: Sequence[int], repeats: int = 10, warmup: int = 2,
                  max_seconds: float | None = None) -> list[float]:
    """Wall-clock times (ms) of ``repeats`` forward passes, in eval mode under ``torch.inference_mode``.

    Args:
        model: the model (its current device; inputs are created on its parameters' device).
        input_shape: full input shape including the batch, e.g. ``(1, 3, 32, 32)``.
        repeats: timed runs (the median is returned).
        warmup: untimed runs first.
        max_seconds: stop timing early once this much time was spent (at least one timed run).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    param = next(iter(model.parameters()), None)
    x = torch.randn(*input_shape, device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            start = time.perf_counter()
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000.0)
                if max_seconds is not None and time.perf_counter() - start > max_seconds:
                    break
    finally:
        model.train(was_training)
    return times


# --------------------------------------------------------------------------------------------------------------
# Which configurations
# --------------------------------------------------------------------------------------------------------------

def candidate_configs(ed: ElasticDepth, strategy: str = "auto", sample: int = 0, seed: int = 0) -> list[list[int]]:
    """Depth configurations of the ordered space to profile (``greedy`` is not enumerable up front).

    ``all``: every configuration. ``sample``: ``sample`` distinct configurations drawn with ``seed``, always
    including the full and the smallest network. ``auto``: ``all`` when the space has at most 64 entries.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid choices: {', '.join(STRATEGIES)}")
    space = SampleSpace.for_model(ed, "ordered", seed=seed)
    if strategy == "auto":
        strategy = "all" if len(space) <= ALL_LIMIT else "greedy"
    if strategy == "all":
        return [list(c) for c in space]
    if strategy == "greedy":
        raise ValueError("the greedy walk depends on accuracies; use greedy_walk(ed, score)")
    if sample < 1:
        raise ValueError(f"--sample needs a positive number of configurations, got {sample}")
    return space.distinct(sample, seed)


def greedy_walk(ed: ElasticDepth, score: Callable[[list[int]], float]) -> list[list[int]]:
    """Walk from the full network to the smallest, removing one block per step with the least accuracy loss.

    At each step every configuration with one stage one block shallower is scored (``score(config)`` ->
    accuracy, higher is better; ties go to the earlier stage); the walk moves to the best one. Returns every
    scored configuration in order, the full network first (``len`` = 1 + sum over steps of the candidates).

    Example:
        >>> ed = ElasticDepth(__import__("stimulative").create_model("cifar_resnet20"))
        >>> path = greedy_walk(ed, lambda c: c[1])     # stage 2 matters most: removed last
        >>> path[-1]
        [1, 1, 1]
    """
    current = list(ed.full_depths)
    visited = [current]
    score(current)
    while True:
        candidates = []
        for i, (d, m) in enumerate(zip(current, ed.min_depths)):
            if d > m:
                candidates.append(current[:i] + [d - 1] + current[i + 1:])
        if not candidates:
            return visited
        scores = [score(c) for c in candidates]
        visited.extend(candidates)
        current = candidates[max(range(len(candidates)), key=lambda k: (scores[k], -k))]


# --------------------------------------------------------------------------------------------------------------
# Measuring one configuration
# --------------------------------------------------------------------------------------------------------------

def profile_config(ed: ElasticDepth, depths: Sequence[int], test: Iterable | None, bn_batches: Iterable | None,
                   bn_images: int, input_size: int, batch_sizes: Sequence[int] = (1, 64), repeats: int = 10,
                   warmup: int = 2, measure_cost: bool = True) -> tuple[dict[str, Any], nn.Module]:
    """Accuracy (after BN re-estimation), params, FLOPs and CPU latency of one sub-network.

    Args:
        ed: the trained model's ``ElasticDepth``.
        depths: ordered depth config.
        test: test batches (``None``: no accuracy).
        bn_batches, bn_images: training batches and image count for the BN re-estimation (0 = off).
        input_size: square input side for FLOPs and latency.
        batch_sizes: latency batch sizes; the row gets ``latency_ms_b{B}`` (median) and ``latency_ms_b{B}_min``.
        repeats, warmup: latency timing (median of ``repeats``).
        measure_cost: also FLOPs and latency (False: accuracy and params only).

    Returns:
        (row dict, the extracted sub-network in eval mode).
    """
    depths = [int(d) for d in depths]
    if hasattr(bn_batches, "set_epoch"):
        bn_batches.set_epoch(0)  # the same images for every configuration
    sub = extract_subnetwork(ed, depths, bn_batches, bn_images)
    row: dict[str, Any] = {"depths": depths, "label": format_depths(depths), "blocks": ed.num_blocks(depths),
                           "params": count_parameters(sub)}
    if test is not None:
        metrics = evaluate(sub, test)
        row.update(acc=metrics["acc"], loss=metrics["loss"], test_images=metrics["n"])
    if measure_cost:
        flops = count_flops(sub, input_size)
        row.update(flops=flops, macs=flops // 2)
        for b in batch_sizes:
            times = forward_times(sub, (b, 3, input_size, input_size), repeats, warmup)
            row[f"latency_ms_b{b}"] = float(statistics.median(times))
            row[f"latency_ms_b{b}_min"] = float(min(times))   # steadier on a busy machine
    return row, sub


# --------------------------------------------------------------------------------------------------------------
# Front, budget, table, plot
# --------------------------------------------------------------------------------------------------------------

def pareto_front(rows: Sequence[dict], cost_key: str, acc_key: str = "acc") -> list[int]:
    """Indices of the rows on the front: no other row has lower-or-equal cost and higher accuracy.

    Example:
        >>> pareto_front([{"acc": 90, "ms": 3}, {"acc": 80, "ms": 4}, {"acc": 70, "ms": 1}], "ms")
        [2, 0]
    """
    order = sorted(range(len(rows)), key=lambda i: (rows[i][cost_key], -rows[i][acc_key]))
    front, best = [], float("-inf")
    for i in order:
        if rows[i][acc_key] > best:
            front.append(i)
            best = rows[i][acc_key]
    return front


def front_area(acc: dict[str, float], cost: dict[str, float]) -> float:
    """One number for an accuracy-cost front: the mean accuracy of the upper front over a log-cost axis.

    The upper front at cost ``c`` is the best accuracy of the configurations that cost at most ``c`` (a step
    function that never falls); its area between the cheapest and the dearest configuration on a
    ``log(cost)`` axis, divided by that axis's length, is an accuracy in the same unit as ``acc``. A method whose
    every depth beats another's at equal cost has the larger area; the cheap end counts as much per halving
    of cost as the dear end.

    Args:
        acc: configuration -> accuracy (e.g. ``"1,1,1" -> 56.2``).
        cost: configuration -> cost (FLOPs, MFLOPs or latency; > 0), for the same configurations.

    Example:
        >>> front_area({"a": 50.0, "b": 70.0}, {"a": 10.0, "b": 100.0})   # 50 from 10 to 100 (b only at 100)
        50.0
        >>> round(front_area({"a": 50.0, "b": 70.0, "c": 60.0}, {"a": 10.0, "b": 100.0, "c": 10 ** 1.5}), 6)
        55.0
    """
    import math

    if set(acc) != set(cost) or not acc:
        raise ValueError("acc and cost must name the same, non-empty set of configurations")
    points = sorted((math.log(cost[k]), acc[k]) for k in acc)
    lo, hi = points[0][0], points[-1][0]
    if hi == lo:
        return max(a for _, a in points)
    area, best = 0.0, float("-inf")
    for (x, a), (x_next, _) in zip(points, points[1:]):
        best = max(best, a)
        area += best * (x_next - x)
    return area / (hi - lo)


def mark_fronts(rows: list[dict], cost_keys: Sequence[str] = ("latency_ms_b1", "flops")) -> None:
    """Add ``front_<cost>`` booleans to every row for each cost present in the rows."""
    for key in cost_keys:
        if rows and all(key in r for r in rows):
            on = set(pareto_front(rows, key))
            for i, r in enumerate(rows):
                r[f"front_{key}"] = i in on


def select_under_budget(rows: Sequence[dict], budget_ms: float | None = None, budget_flops: float | None = None,
                        latency_key: str = "latency_ms_b1") -> dict:
    """The most accurate row whose latency (ms, ``latency_key``) and FLOPs are within the given budgets.

    Ties in accuracy go to the cheaper row (lower FLOPs, then latency). Raises ``ValueError`` naming the
    cheapest configuration when nothing fits.

    Example:
        >>> rows = [{"label": "3,3,3", "acc": 92.0, "flops": 80e6}, {"label": "1,1,1", "acc": 85.0, "flops": 30e6}]
        >>> select_under_budget(rows, budget_flops=50e6)["label"]
        '1,1,1'
    """
    if budget_ms is None and budget_flops is None:
        raise ValueError("give a budget: --budget-ms or --budget-flops")
    for value, name in ((budget_ms, "--budget-ms"), (budget_flops, "--budget-flops")):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    fits = [r for r in rows
            if (budget_ms is None or r[latency_key] <= budget_ms)
            and (budget_flops is None or r["flops"] <= budget_flops)]
    if not fits:
        key, budget, unit = (latency_key, budget_ms, " ms") if budget_ms is not None else ("flops", budget_flops, "")
        cheapest = min(rows, key=lambda r: r[key])
        raise ValueError(f"no depth configuration fits the budget {budget:g}{unit} ({key}); the cheapest is "
                         f"{cheapest['label']} at {cheapest[key]:g}{unit}")
    return max(fits, key=lambda r: (r["acc"], -r.get("flops", 0), -r.get(latency_key, 0)))


_CSV_FIELDS = ["label", "blocks", "acc", "loss", "params", "flops", "macs"]


def write_table(rows: Sequence[dict], out_dir: str | Path, meta: dict | None = None,
                stem: str = "pareto") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (one row per configuration) and ``<stem>.json`` (rows + ``meta``)."""
    out_dir = Path(out_dir)
    keys = [k for k in _CSV_FIELDS if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r if k.startswith(("latency_", "front_")) and k not in keys})
    csv_path = write_csv([{**r, "depths": r["label"]} for r in rows], out_dir / f"{stem}.csv", ["depths"] + keys)
    json_path = write_json({**(meta or {}), "rows": list(rows)}, out_dir / f"{stem}.json", indent=2)
    return csv_path, json_path


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str = "",
                latency_key: str = "latency_ms_b1", selected: dict | None = None) -> Path:
    """Accuracy vs CPU latency and vs FLOPs: every configuration grey, the Pareto front highlighted and labelled.

    Saved as PNG at ``path`` (the data behind it is the table from ``write_table``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(latency_key, f"CPU latency, batch {latency_key.rsplit('_b', 1)[-1]} (ms, median)", 1.0),
              ("flops", "MFLOPs per image (conv + matmul, 1 MAC = 2 FLOPs)", 1e-6)]
    panels = [p for p in panels if rows and all(p[0] in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (key, xlabel, scale) in zip(axes[0], panels):
        xs = [r[key] * scale for r in rows]
        ys = [r["acc"] for r in rows]
        ax.scatter(xs, ys, color="0.7", s=18, label="all depth configs", zorder=2)
        front = pareto_front(rows, key)
        fx = [rows[i][key] * scale for i in front]
        fy = [rows[i]["acc"] for i in front]
        ax.plot(fx, fy, "-o", color="tab:red", ms=5, lw=1.5, label="Pareto front", zorder=3)
        for i in front:
            ax.annotate(rows[i]["label"], (rows[i][key] * scale, rows[i]["acc"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="tab:red")
        if selected is not None:
            ax.scatter([selected[key] * scale], [selected["acc"]], s=120, facecolors="none", edgecolors="tab:blue",
                       linewidths=1.8, label=f"selected {selected['label']}", zorder=4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.06)   # room for the labels
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------------
# The table of one run
# --------------------------------------------------------------------------------------------------------------

def pareto_table(run: Run, strategy: str = "auto", sample: int = 0, seed: int = 0, bn_images: int = 2000,
                 input_size: int | None = None, batch_sizes: Sequence[int] = (1, 64), repeats: int = 10,
                 warmup: int = 2, progress: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Profile the depth configurations of an opened run (``profile_config`` each) and mark the Pareto fronts.

    Args:
        run: the opened training checkpoint.
        strategy: ``all``, ``sample`` (``sample`` configs drawn with ``seed``), ``greedy`` (``greedy_walk`` on
            test accuracy) or ``auto`` (all for spaces up to 64 configurations, else greedy).
        bn_images: BN re-estimation images per configuration (the same images for each).
        input_size: input side for FLOPs and latency (default: the run's).
        batch_sizes, repeats, warmup: latency measurement; the fronts use the first batch size.
        progress: a progress bar.

    Returns:
        (one row per configuration in profiling order, the table's settings for ``write_table``).
    """
    from tqdm.auto import tqdm

    ed, data = run.ed, run.data()
    input_size = input_size or run.input_size
    space_size = len(SampleSpace.for_model(ed, "ordered"))
    if strategy == "auto":
        strategy = "all" if space_size <= ALL_LIMIT else "greedy"
    rows: dict[tuple, dict] = {}

    def profile(config: list[int]) -> dict:
        key = tuple(config)
        if key not in rows:
            rows[key], _ = profile_config(ed, config, data.test, data.train, bn_images, input_size, batch_sizes,
                                          repeats, warmup)
            bar.update(1)
            bar.set_postfix_str(f"{rows[key]['label']}: {rows[key]['acc']:.2f}%")
        return rows[key]

    if strategy == "greedy":
        with tqdm(desc="pareto (greedy walk)", unit="config", disable=not progress) as bar:
            order = greedy_walk(ed, lambda c: profile(c)["acc"])
    else:
        order = candidate_configs(ed, strategy, sample, seed)
        with tqdm(total=len(order), desc=f"pareto ({strategy})", disable=not progress) as bar:
            for config in order:
                profile(config)
    table = [rows[tuple(c)] for c in order]
    mark_fronts(table, [f"latency_ms_b{batch_sizes[0]}", "flops"])
    meta = {"checkpoint": str(run.path), "model": run.config.model.name, "full_depths": ed.full_depths,
            "strategy": strategy, "space_size": space_size, "configs": len(table), "bn_recal_images": bn_images,
            "input_size": input_size, "latency": {"device": "cpu", "threads": torch.get_num_threads(),
                                                  "batch_sizes": list(batch_sizes), "repeats": repeats,
                                                  "warmup": warmup, "statistic": "median ms"},
            "flops_note": "FlopCounterMode, one image: convolutions and matmuls, 2 FLOPs per MAC; macs = flops/2",
            "accuracy": "top-1 % on the test data after BN re-estimation"}
    return table, meta
