"""Figures of the analyses, drawn from the same rows that are written to JSON/CSV.

Plots take data, the analyses compute it: every function here gets its rows ready-made (``plot_logits`` both the
per-config rows and ``logits.norms_by_blocks`` of them) and imports no analysis module.

Matplotlib's object API (``matplotlib.figure.Figure``) is used, not pyplot, so nothing depends on a display or
on global backend state. Every function writes one PNG and returns its path. The training curves are drawn by
``stimulative.train.log.plot_training_curves`` (the same figure for one run and for a report).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator

from ..train.log import run_colors

__all__ = ["plot_loafing", "plot_logits", "plot_erf"]

_DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _mean_by(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    groups: dict[float, list[float]] = {}
    for x, y in zip(xs, ys):
        groups.setdefault(x, []).append(y)
    keys = sorted(groups)
    return keys, [float(np.mean(groups[k])) for k in keys]


def plot_loafing(rows: Sequence[dict], path: str | Path, bn_images: int = 0, chance: float | None = None,
                 colors: dict[str, str] | None = None) -> Path:
    """Sub-network accuracy vs number of blocks, per run; networks trained alone as black stars.

    Args:
        rows: loafing rows (``kind`` "inside" or "alone", ``run``, ``num_blocks``, ``acc``, ``acc_bn``).
        path: PNG to write.
        bn_images: images used for BN re-estimation (shown in the panel title).
        chance: chance accuracy in % (drawn as a dotted line), e.g. 10 for CIFAR-10.
        colors: run -> colour (default ``run_colors``).
    """
    inside = [r for r in rows if r["kind"] == "inside"]
    alone = [r for r in rows if r["kind"] == "alone"]
    keys = [k for k in ("acc", "acc_bn") if any(r.get(k) is not None for r in inside)] or ["acc"]
    titles = {"acc": "inside the trained network\n(BN statistics of the full network)",
              "acc_bn": f"inside the trained network\n(BN statistics re-estimated per sub-network"
                        f"{f', {bn_images} images' if bn_images else ''})"}
    colors = colors or run_colors([r["run"] for r in inside])
    fig = Figure(figsize=(6.2 * len(keys), 4.8), layout="constrained")
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for run in dict.fromkeys(r["run"] for r in inside):
            pts = [r for r in inside if r["run"] == run and r.get(key) is not None]
            xs, ys = [r["num_blocks"] for r in pts], [r[key] for r in pts]
            color = colors.get(run, "tab:blue")
            ax.scatter(xs, ys, s=16, alpha=0.35, color=color, linewidths=0)
            mx, my = _mean_by(xs, ys)
            ax.plot(mx, my, "-o", color=color, ms=4, lw=1.8, label=f"{run} (mean per size)")
        if alone:
            ax.scatter([r["num_blocks"] for r in alone], [r["acc"] for r in alone], marker="*", s=170,
                       color="black", zorder=5, label="same sub-network trained alone")
            for r in alone:
                ax.annotate(r["depths"], (r["num_blocks"], r["acc"]), textcoords="offset points",
                            xytext=(6, 4), fontsize=7)
        if chance is not None:
            ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance ({chance:g}%)")
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("residual blocks executed (sub-network depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 test accuracy (%)")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Network loafing: accuracy of sub-networks (faint dots: individual depth configurations)",
                 fontsize=11)
    return _save(fig, path)


def plot_logits(rows: Sequence[dict], grouped: Sequence[dict], path: str | Path,
                colors: dict[str, str] | None = None) -> Path:
    """Mean logit L2 norm vs number of blocks (absolute and relative to the full network), runs overlaid.

    Args:
        rows: per-config logit rows (``run``, ``num_blocks``, ``norm_mean``, ``norm_std``): the faint dots.
        grouped: the same rows averaged per number of blocks (``logits.norms_by_blocks(rows)``: ``run``,
            ``num_blocks``, ``norm_mean``, ``norm_std``, ``relative``): the lines.
        path: PNG to write.
    """
    colors = colors or run_colors([r["run"] for r in rows])
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax_abs, ax_rel = fig.subplots(1, 2)
    for run in dict.fromkeys(r["run"] for r in rows):
        color = colors.get(run, "tab:blue")
        pts = [r for r in rows if r["run"] == run]
        ax_abs.scatter([r["num_blocks"] for r in pts], [r["norm_mean"] for r in pts], s=14, alpha=0.35,
                       color=color, linewidths=0)
        g = [r for r in grouped if r["run"] == run]
        xs = [r["num_blocks"] for r in g]
        ax_abs.errorbar(xs, [r["norm_mean"] for r in g], yerr=[r["norm_std"] for r in g], fmt="-o", ms=4,
                        capsize=3, color=color, label=run)
        ax_rel.plot(xs, [r["relative"] for r in g], "-o", ms=4, color=color, label=run)
    ax_abs.set_title("mean L2 norm of the logit vector (error bars: std over images)", fontsize=10)
    ax_abs.set_ylabel("‖logits‖₂ (logit units)")
    ax_rel.set_title("relative to the full network", fontsize=10)
    ax_rel.set_ylabel("‖logits‖₂ / ‖logits of full network‖₂")
    ax_rel.axhline(1.0, color="gray", ls=":", lw=1)
    for ax in (ax_abs, ax_rel):
        ax.set_xlabel("residual blocks executed (sub-network depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Logit amplitude of sub-networks on the test set", fontsize=11)
    return _save(fig, path)


def plot_erf(entries: Sequence[dict], path: str | Path) -> Path:
    """Grid of ERF heatmaps: rows = (run, depth config), columns = input sizes (largest first).

    Args:
        entries: dicts with ``run``, ``depths``, ``size``, ``heatmap`` (2-D list), ``radius_px``,
            ``radius_frac``, ``centre``.
        path: PNG to write.
    """
    row_keys = list(dict.fromkeys((e["run"], e["depths"]) for e in entries))
    sizes = sorted({int(e["size"]) for e in entries}, reverse=True)
    lookup = {(e["run"], e["depths"], int(e["size"])): e for e in entries}
    fig = Figure(figsize=(2.7 * len(sizes) + 1.4, 2.5 * len(row_keys) + 0.6), layout="constrained")
    axes = fig.subplots(len(row_keys), len(sizes), squeeze=False)
    image = None
    for i, (run, depths) in enumerate(row_keys):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            e = lookup.get((run, depths, size))
            ax.set_xticks([])
            ax.set_yticks([])
            if e is None:
                ax.set_axis_off()
                continue
            heat = np.asarray(e["heatmap"], dtype=float)
            peak = heat.max() if heat.size and heat.max() > 0 else 1.0
            image = ax.imshow(heat / peak, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            cy, cx = e["centre"]
            if np.isfinite(cy) and np.isfinite(cx):
                ax.add_patch(Circle((cx, cy), e["radius_px"], fill=False, color="cyan", lw=1.2, ls="--"))
            ax.set_title(f"{size}x{size} px: r90 = {e['radius_px']:.1f} px ({100 * e['radius_frac']:.0f}%)",
                         fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{run}\ndepths {depths}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="|d centre unit / d input| (normalised to max)")
    fig.suptitle("Effective receptive field (dashed circle: radius holding 90% of the gradient mass)", fontsize=10)
    return _save(fig, path)
