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

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.bn import recalibrate_bn
from ..core.elastic import ElasticDepth
from .runs import format_depths

__all__ = ["logit_norms", "subnetwork_logit_norms", "norms_by_blocks"]


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
        saved = {k: v.clone() for k, v in model.state_dict().items()
                 if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        try:
            with ed.depth(config):
                if bn_images > 0:
                    if train is None:
                        raise ValueError("bn_images > 0 needs training batches")
                    recalibrate_bn(model, train, bn_images, device=device)
                stats = logit_norms(model, test, device=device)
        finally:
            model.load_state_dict(saved, strict=False)
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
