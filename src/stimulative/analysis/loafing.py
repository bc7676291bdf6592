"""Network loafing: how well each sub-network works inside the trained network (and, optionally, alone).

A residual network is an implicit ensemble of shallower sub-networks. After common training the sub-networks
taken out of it are far worse than the same architectures trained alone: they "loaf" inside the group.
``subnetwork_accuracy`` measures every requested sub-network inside a trained network, with the network's own
BatchNorm statistics and with statistics re-estimated for that sub-network (so the gap is not just a BN
mismatch); ``loafing_summary`` condenses a table into the loafing gap numbers.

Example:
    >>> import stimulative as st
    >>> from stimulative.data import build_data
    >>> from stimulative.train.config import DataConfig
    >>> model = st.create_model("cifar_resnet_tiny", num_classes=10)
    >>> ed = st.ElasticDepth(model)
    >>> data = build_data(DataConfig(name="synthetic", test_subset=64, train_subset=64), 32, 64)
    >>> rows = subnetwork_accuracy(ed, [[2, 2, 2], [1, 1, 1]], data.test, data.train, bn_images=64, progress=False)
    >>> sorted(rows[0])
    ['acc', 'acc_bn', 'depths', 'kind', 'loss', 'loss_bn', 'n', 'num_blocks', 'run']
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.elastic import ElasticDepth, format_depths
from ..core.evaluation import evaluate, evaluate_depth
from ..io import write_csv, write_json
from ..runs import Run, measure_selected
from ..train.log import run_colors
from .plots import plot_loafing

__all__ = ["subnetwork_accuracy", "alone_accuracy", "alone_depths", "loafing_summary", "loafing_analysis",
           "write_loafing", "loafing_table", "COLUMNS"]

# Names of version 0.1.0 ("individual" for a network trained on its own), read until the next release.
_RENAMED = {"individual_accuracy": "alone_accuracy", "individual_depths": "alone_depths"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        warnings.warn(f"stimulative.analysis.loafing.{name} is now {_RENAMED[name]}; the old name is read until "
                      "the next release", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

COLUMNS = ["run", "kind", "depths", "num_blocks", "acc", "acc_bn", "loss", "loss_bn", "n"]

INSIDE, ALONE = "inside", "alone"


def subnetwork_accuracy(ed: ElasticDepth, configs: Sequence[Sequence[int]], test: Iterable,
                        train: Iterable | None = None, bn_images: int = 0, run: str = "",
                        device: torch.device | str | None = None, progress: bool = True,
                        own_bn: bool = True) -> list[dict]:
    """Accuracy and loss of each depth config inside the trained network.

    Args:
        ed: the trained model's ElasticDepth (the model is evaluated in eval mode; its weights are not changed
            and its BN statistics are restored after every re-estimation).
        configs: ordered depth configs (one int per stage).
        test: ``(x, y)`` evaluation batches.
        train: training batches for BN re-estimation (needed when ``bn_images > 0``).
        bn_images: re-estimate BN statistics on this many training images per config (0: skip; then no
            ``acc_bn``/``loss_bn`` columns are filled).
        run: run name stored in every row.
        device: move batches there.
        progress: show a tqdm bar.
        own_bn: also evaluate with the network's own BN statistics (False: ``acc``/``loss`` stay None).

    Returns:
        One row per config: ``run, kind="inside", depths ("3,3,3"), num_blocks, acc (%), loss, acc_bn, loss_bn, n``.
    """
    rows = []
    if bn_images > 0 and hasattr(train, "set_epoch"):
        train.set_epoch(0)  # the same (seeded) training images for every config
    for config in tqdm(list(configs), desc=f"loafing {run}".strip(), disable=not progress, leave=False):
        row = {"run": run, "kind": INSIDE, "depths": format_depths(config), "num_blocks": ed.num_blocks(config),
               "acc": None, "loss": None, "acc_bn": None, "loss_bn": None, "n": None}
        if own_bn:
            plain = evaluate_depth(ed, config, test, device=device)
            row.update(acc=plain["acc"], loss=plain["loss"], n=plain["n"])
        if bn_images > 0:
            recal = evaluate_depth(ed, config, test, bn_batches=train, bn_images=bn_images, device=device)
            row.update(acc_bn=recal["acc"], loss_bn=recal["loss"], n=recal["n"])
        rows.append(row)
    return rows


def alone_depths(run: Run) -> list[int]:
    """The depth config a network trained alone corresponds to.

    A network trained alone with ``d_i`` blocks in stage i is the ``(d_1, d_2, ...)`` sub-network of a deeper
    network of the same family (a ResNet-20 is the ``3,3,3`` sub-network of a ResNet-56). Exported sub-networks
    carry their config; otherwise it is the model's full depth.
    """
    if run.loaded.depths is not None:
        return [int(d) for d in run.loaded.depths]
    blocks = getattr(run.model, "blocks_per_stage", None)
    if isinstance(blocks, list):  # CIFAR ResNets: also stages of 1 block, which ElasticDepth does not list
        return [int(d) for d in blocks]
    return list(run.ed.full_depths)


def alone_accuracy(run: Run, test: Iterable, device: torch.device | str | None = None) -> dict:
    """Accuracy of a network trained alone (its own BN statistics) as a loafing-table row."""
    depths = alone_depths(run)
    result = evaluate(run.model, test, device=device)
    num_blocks = sum(depths)  # as ElasticDepth.num_blocks counts the same config inside the ensemble
    return {"run": run.name, "kind": ALONE, "depths": format_depths(depths), "num_blocks": num_blocks,
            "acc": result["acc"], "loss": result["loss"], "acc_bn": None, "loss_bn": None, "n": result["n"]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def loafing_summary(rows: Sequence[dict], run: str, full_depths: Sequence[int],
                    alone: Sequence[dict] = ()) -> dict:
    """The loafing gap of one run from its table rows.

    Args:
        rows: ``subnetwork_accuracy`` rows (only those with ``run == run`` and kind "inside" are used).
        run: run name.
        full_depths: the full network's config (its row is the reference).
        alone: rows of networks trained alone (kind "alone"), matched by ``depths``.

    Returns:
        ``full_acc``/``full_acc_bn``; ``mean_sub_acc``(``_bn``): mean accuracy of the other sub-networks;
        ``mean_drop``(``_bn``): full minus that mean (percentage points: how much the sub-networks lose);
        ``min_sub_acc``(``_bn``): the worst of them; ``smallest_*``: the smallest evaluated sub-network;
        ``gap_vs_alone``(``_bn``): mean of
        (accuracy trained alone - accuracy inside) over the matched configs (the paper's loafing gap), None
        without runs trained alone.
    """
    inside = [r for r in rows if r["run"] == run and r["kind"] == INSIDE]
    full_key = format_depths(full_depths)
    full = next((r for r in inside if r["depths"] == full_key), None)
    if full is None:
        raise ValueError(f"the loafing table of {run!r} has no row for the full network {full_key}")
    subs = [r for r in inside if r is not full]
    smallest = min(inside, key=lambda r: (r["num_blocks"], r["depths"]))
    summary: dict = {"run": run, "full_depths": full_key, "n_subnets": len(subs),
                     "full_acc": full["acc"], "full_acc_bn": full["acc_bn"],
                     "smallest_depths": smallest["depths"], "smallest_acc": smallest["acc"],
                     "smallest_acc_bn": smallest["acc_bn"]}
    for suffix in ("", "_bn"):
        key = "acc" + suffix
        values = [r[key] for r in subs if r[key] is not None]
        mean = _mean(values)
        summary["mean_sub_acc" + suffix] = mean
        summary["min_sub_acc" + suffix] = min(values) if values else None
        summary["mean_drop" + suffix] = (full[key] - mean) if mean is not None and full[key] is not None else None
        by_depth = {r["depths"]: r for r in inside}
        gaps = [a["acc"] - by_depth[a["depths"]][key] for a in alone
                if a["depths"] in by_depth and by_depth[a["depths"]][key] is not None]
        summary["gap_vs_alone" + suffix] = _mean(gaps)
        if not suffix:
            summary["n_alone"] = len(gaps)
    return summary


# ------------------------------------------------------------------------------------------------------------
# The whole analysis of several runs: rows, summaries, files, table
# ------------------------------------------------------------------------------------------------------------

def loafing_analysis(runs: Sequence[Run], alone: Sequence[Run] = (), *, depths: Sequence[str] | None = None,
                     all_configs: bool = False, sample: int | None = None, seed: int = 0, bn_images: int = 2000,
                     device: torch.device | str = "cpu", overrides: Sequence[str] = (),
                     progress: bool = True) -> dict:
    """The loafing table of ``runs``: every selected sub-network inside each (``select_configs``), plus the
    networks trained alone (``alone``, evaluated on the first run's test images).

    Returns:
        ``{"rows", "summary", "settings"}`` (what ``write_loafing`` writes as loafing.json).
    """

    def alone_configs(run: Run) -> list[list[int]]:  # every matching alone-config is also evaluated inside
        return [d for d in (alone_depths(a) for a in alone) if _in_space(run, d)]

    rows = measure_selected(runs, subnetwork_accuracy, depths=depths, all_configs=all_configs, sample=sample,
                            seed=seed, bn_images=bn_images, device=device, progress=progress, extra=alone_configs)
    alone_rows = []
    for one in alone:
        depths_alone = alone_depths(one)
        if not any(_in_space(r, depths_alone) for r in runs):
            raise ValueError(f"run trained alone {one.name!r} ({one.path}) has depths "
                             f"{format_depths(depths_alone)}, which is not a sub-network of {', '.join(f'{r.name} {r.ed.full_depths}' for r in runs)}")
        # evaluated on the first checkpoint's test set, so every number in the table uses the same images
        alone_rows.append(alone_accuracy(one, runs[0].data(device).test, device=device))
    rows += alone_rows
    summaries = [loafing_summary(rows, r.name, r.ed.full_depths,
                                 [a for a in alone_rows if _in_space(r, [int(d) for d in a["depths"].split(",")])])
                 for r in runs]
    settings = {"bn_recal_images": bn_images, "seed": seed, "overrides": list(overrides),
                "checkpoints": {r.name: str(r.path) for r in runs},
                "alone": {a.name: str(a.path) for a in alone},
                "selection": "depths" if depths else "all" if all_configs else
                             f"sample {sample}" if sample else "default",
                "test_images": rows[0]["n"] if rows else 0, "num_classes": runs[0].num_classes}
    return {"rows": rows, "summary": summaries, "settings": settings}


def write_loafing(result: dict, out: str | Path) -> list[Path]:
    """loafing.json, loafing.csv, loafing_summary.csv and loafing.png of a ``loafing_analysis`` result."""
    out = Path(out)
    rows, settings = result["rows"], result["settings"]
    runs = list(settings["checkpoints"])
    return [write_json(result, out / "loafing.json"), write_csv(rows, out / "loafing.csv", COLUMNS),
            write_csv(result["summary"], out / "loafing_summary.csv"),
            plot_loafing(rows, out / "loafing.png", bn_images=settings["bn_recal_images"],
                         chance=100.0 / settings["num_classes"], colors=run_colors(runs))]


def loafing_table(rows: Sequence[dict], summaries: Sequence[dict]) -> str:
    """The loafing table and the per-run summary lines as text."""
    lines = [f"{'run':<24} {'kind':<7} {'depths':<12} {'blocks':>6} {'acc %':>7} {'acc+BN %':>9}"]
    for r in rows:
        lines.append(f"{r['run'][:24]:<24} {r['kind']:<7} {r['depths']:<12} {r['num_blocks']:>6} "
                     f"{_fmt(r['acc']):>7} {_fmt(r['acc_bn']):>9}")
    for s in summaries:
        line = (f"{s['run']}: full {_fmt(s['full_acc'])}% | {s['n_subnets']} sub-networks: mean "
                f"{_fmt(s['mean_sub_acc'])}% (drop {_fmt(s['mean_drop'])} pts)")
        if s["mean_sub_acc_bn"] is not None:
            line += f", with BN re-estimation {_fmt(s['mean_sub_acc_bn'])}% (drop {_fmt(s['mean_drop_bn'])} pts)"
        if s["gap_vs_alone"] is not None:
            line += f" | loafing gap vs alone {_fmt(s['gap_vs_alone'])} pts"
            if s["gap_vs_alone_bn"] is not None:
                line += f" ({_fmt(s['gap_vs_alone_bn'])} with BN re-estimation)"
        lines.append(line)
    return "\n".join(lines)


def _in_space(run: Run, depths: list[int]) -> bool:
    try:
        run.ed.block_modes(depths)
    except ValueError:
        return False
    return True


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"
