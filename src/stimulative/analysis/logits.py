"""Logit amplitude of sub-networks: deeper sub-networks produce larger logits (the motivation for KL-).

ST++ observes that networks of different capacity produce logits of different magnitude, so matching a
sub-network's full softmax to the main network's (plain KL) also forces it to match a magnitude it cannot
reach; KL- compares only the logits' direction. ``logit_norms`` measures the per-image L2 norm of the logit
vector of one network over a test set; ``subnetwork_logit_norms`` does it for every requested sub-network.

Example:
    >>> import stimulative as st
    >>> model = st.create_model("cifar_resnet_tiny", num_classes=10).eval()
    >>> stats = logit_norms(model, [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))])
    >>> sorted(stats)
    ['acc', 'n', 'norm_mean', 'norm_std', 'std_mean']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.bn import recalibrated
from ..core.elastic import ElasticDepth, format_depths
from ..io import write_csv, write_json
from ..runs import Run, measure_selected
from ..train.log import run_colors
from .plots import plot_logits

__all__ = ["logit_norms", "subnetwork_logit_norms", "norms_by_blocks", "logits_analysis", "write_logits",
           "logits_table", "COLUMNS"]

COLUMNS = ["run", "depths", "num_blocks", "norm_mean", "norm_std", "std_mean", "acc", "n"]


@torch.no_grad()
def logit_norms(model: nn.Module, batches: Iterable, device: torch.device | str | None = None) -> dict:
    """Statistics of the logits of ``model`` (eval mode) over ``(x, y)`` batches.

    Returns:
        ``norm_mean``/``norm_std``: mean and standard deviation over images of the L2 norm of the logit
        vector; ``std_mean``: mean over images of the standard deviation across classes (the amplitude that
        layer-norm KL- divides out); ``acc`` (%); ``n`` images.
    """
    was_training = model.training
    model.eval()
    norms, stds, correct = [], [], 0
    try:
        for x, y in batches:
            if device is not None:
                x, y = x.to(device), y.to(device)
            logits = model(x).float()
            norms.append(logits.norm(dim=1).cpu())
            stds.append(logits.std(dim=1).cpu())
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    if not norms:
        raise ValueError("logit statistics got no images: the evaluation data is empty")
    norm, std = torch.cat(norms).double(), torch.cat(stds).double()
    return {"norm_mean": float(norm.mean()), "norm_std": float(norm.std(unbiased=False)),
            "std_mean": float(std.mean()), "acc": 100.0 * correct / norm.numel(), "n": norm.numel()}


def subnetwork_logit_norms(ed: ElasticDepth, configs: Sequence[Sequence[int]], test: Iterable,
                           train: Iterable | None = None, bn_images: int = 0, run: str = "",
                           device: torch.device | str | None = None, progress: bool = True) -> list[dict]:
    """``logit_norms`` of each depth config inside the trained network.

    With ``bn_images > 0`` BN statistics are re-estimated for each config first (closer to training, where
    sub-networks normalise with their own batch statistics); the original statistics are restored after.

    Returns:
        One row per config: ``run, depths, num_blocks, norm_mean, norm_std, std_mean, acc, n``.
    """
    model = ed.model
    rows = []
    if bn_images > 0 and hasattr(train, "set_epoch"):
        train.set_epoch(0)
    for config in tqdm(list(configs), desc=f"logits {run}".strip(), disable=not progress, leave=False):
        with ed.depth(config), recalibrated(model, train, bn_images, device=device):
            stats = logit_norms(model, test, device=device)
        rows.append({"run": run, "depths": format_depths(config), "num_blocks": ed.num_blocks(config), **stats})
    return rows


def norms_by_blocks(rows: Sequence[dict]) -> list[dict]:
    """Average the per-config rows of each run over configs with the same number of blocks.

    Returns rows ``run, num_blocks, norm_mean, norm_std, relative`` (``relative``: ``norm_mean`` divided by the
    full network's, i.e. the largest number of blocks of that run), sorted by run then blocks.
    """
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["run"], int(r["num_blocks"])), []).append(r)
    out = []
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for run in runs:
        keys = sorted(k for k in groups if k[0] == run)
        full_norm = None
        entries = []
        for key in keys:
            g = groups[key]
            entry = {"run": run, "num_blocks": key[1], "configs": len(g),
                     "norm_mean": sum(r["norm_mean"] for r in g) / len(g),
                     "norm_std": sum(r["norm_std"] for r in g) / len(g)}
            entries.append(entry)
        if entries:
            full_norm = entries[-1]["norm_mean"]
        for e in entries:
            e["relative"] = e["norm_mean"] / full_norm if full_norm else None
        out += entries
    return out


def logits_analysis(runs: Sequence[Run], *, depths: Sequence[str] | None = None, all_configs: bool = False,
                    sample: int | None = None, seed: int = 0, bn_images: int = 2000,
                    device: torch.device | str = "cpu", overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Logit norms of the selected sub-networks (``select_configs``) of every run.

    Returns:
        ``{"rows", "by_blocks", "settings"}`` (what ``write_logits`` writes as logits.json).
    """
    rows = measure_selected(runs, subnetwork_logit_norms, depths=depths, all_configs=all_configs, sample=sample,
                            seed=seed, bn_images=bn_images, device=device, progress=progress)
    settings = {"bn_recal_images": bn_images, "seed": seed, "overrides": list(overrides),
                "checkpoints": {r.name: str(r.path) for r in runs}}
    return {"rows": rows, "by_blocks": norms_by_blocks(rows), "settings": settings}


def write_logits(result: dict, out: str | Path) -> list[Path]:
    """logits.json, logits.csv and logits.png of a ``logits_analysis`` result."""
    out = Path(out)
    colors = run_colors(list(result["settings"]["checkpoints"]))
    return [write_json(result, out / "logits.json"), write_csv(result["rows"], out / "logits.csv", COLUMNS),
            plot_logits(result["rows"], result.get("by_blocks") or norms_by_blocks(result["rows"]), out / "logits.png",
                        colors=colors)]


def logits_table(grouped: Sequence[dict]) -> str:
    """``norms_by_blocks`` rows as text."""
    lines = [f"{'run':<24} {'blocks':>6} {'configs':>7} {'mean |z|':>9} {'std |z|':>8} {'rel. full':>9}"]
    lines += [f"{g['run'][:24]:<24} {g['num_blocks']:>6} {g['configs']:>7} {g['norm_mean']:>9.3f} "
              f"{g['norm_std']:>8.3f} {g['relative']:>9.3f}" for g in grouped]
    return "\n".join(lines)
