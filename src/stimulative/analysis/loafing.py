"""Network loafing: how well each sub-network works inside the trained network (and, optionally, alone).

A residual network is an implicit ensemble of shallower sub-networks. After common training the sub-networks
taken out of it are far worse than the same architectures trained individually: they "loaf" inside the group.
``subnetwork_accuracy`` measures every requested sub-network inside a trained network, with the network's own
BatchNorm statistics and with statistics re-estimated for that sub-network (so the gap is not just a BN
mismatch); ``loafing_summary`` condenses a table into the loafing gap numbers.

Example:
    >>> import stimulative as st
    >>> from stimulative.data import build_data
    >>> from stimulative.config import DataConfig
    >>> model = st.create_model("cifar_resnet_tiny", num_classes=10)
    >>> ed = st.ElasticDepth(model)
    >>> data = build_data(DataConfig(name="synthetic", test_subset=64, train_subset=64), 32, 64)
    >>> rows = subnetwork_accuracy(ed, [[2, 2, 2], [1, 1, 1]], data.test, data.train, bn_images=64, progress=False)
    >>> sorted(rows[0])
    ['acc', 'acc_bn', 'depths', 'kind', 'loss', 'loss_bn', 'n', 'num_blocks', 'run']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..core.elastic import ElasticDepth
from ..core.evaluation import evaluate, evaluate_depth
from .runs import AnalysedRun, format_depths

__all__ = ["subnetwork_accuracy", "individual_accuracy", "individual_depths", "loafing_summary"]

INSIDE, ALONE = "inside", "alone"


def subnetwork_accuracy(ed: ElasticDepth, configs: Sequence[Sequence[int]], test: Iterable,
                        train: Iterable | None = None, bn_images: int = 0, run: str = "",
                        device: torch.device | str | None = None, progress: bool = True) -> list[dict]:
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

    Returns:
        One row per config: ``run, kind="inside", depths ("3,3,3"), num_blocks, acc (%), loss, acc_bn, loss_bn, n``.
    """
    rows = []
    if bn_images > 0 and hasattr(train, "set_epoch"):
        train.set_epoch(0)  # the same (seeded) training images for every config
    for config in tqdm(list(configs), desc=f"loafing {run}".strip(), disable=not progress, leave=False):
        plain = evaluate_depth(ed, config, test, device=device)
        row = {"run": run, "kind": INSIDE, "depths": format_depths(config), "num_blocks": ed.num_blocks(config),
               "acc": plain["acc"], "loss": plain["loss"], "acc_bn": None, "loss_bn": None, "n": plain["n"]}
        if bn_images > 0:
            recal = evaluate_depth(ed, config, test, bn_batches=train, bn_images=bn_images, device=device)
            row["acc_bn"], row["loss_bn"] = recal["acc"], recal["loss"]
        rows.append(row)
    return rows


def individual_depths(run: AnalysedRun) -> list[int]:
    """The depth config an individually trained network corresponds to.

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


def individual_accuracy(run: AnalysedRun, test: Iterable, device: torch.device | str | None = None) -> dict:
    """Accuracy of an individually trained network (its own BN statistics) as a loafing-table row."""
    depths = individual_depths(run)
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
        alone: rows of individually trained networks (kind "alone"), matched by ``depths``.

    Returns:
        ``full_acc``/``full_acc_bn``; ``mean_sub_acc``(``_bn``): mean accuracy of the other sub-networks;
        ``mean_drop``(``_bn``): full minus that mean (percentage points: how much the sub-networks lose);
        ``smallest_*``: the smallest evaluated sub-network; ``gap_vs_alone``(``_bn``): mean of
        (accuracy trained alone - accuracy inside) over the matched configs (the paper's loafing gap), None
        without individual runs.
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
        summary["mean_drop" + suffix] = (full[key] - mean) if mean is not None and full[key] is not None else None
        by_depth = {r["depths"]: r for r in inside}
        gaps = [a["acc"] - by_depth[a["depths"]][key] for a in alone
                if a["depths"] in by_depth and by_depth[a["depths"]][key] is not None]
        summary["gap_vs_alone" + suffix] = _mean(gaps)
        if not suffix:
            summary["n_alone"] = len(gaps)
    return summary
