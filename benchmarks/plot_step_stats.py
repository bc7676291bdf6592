"""Plot the instrumented steps (``steps.jsonl``, written with ``stats_every=K``) of several runs side by side.

Five panels over training steps: the main loss, the gradient norm of the main loss and of the sub-network
losses (each backward's own contribution), the logit std of the main network and of the sub-networks, the
ratio of sub-network to main gradient norm, and the cosine between each sub-network's gradient and the
main loss's gradient (below 0: the sub-network pulls the shared weights against the main objective). Also writes the numbers behind the figure as JSON.

    python benchmarks/plot_step_stats.py benchmarks/runs/ablation/r20_proxy_ct_s0 \\
        benchmarks/runs/ablation/r20_proxy_stpp_s0 --labels CT ST++ --out docs/figures/step_stats
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_steps(run_dir: Path) -> list[dict]:
    path = run_dir / "steps.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: train with stats_every=K to write it")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict]) -> dict[str, list]:
    out: dict[str, list] = {"step": [], "loss_main": [], "grad_main": [], "grad_sub": [], "std_main": [],
                            "std_sub": [], "std_sub_min": [], "grad_ratio": [], "cos_sub": []}
    for r in records:
        out["step"].append(r["step"])
        out["loss_main"].append(r["loss_main"])
        out["grad_main"].append(r.get("grad_main"))
        out["std_main"].append(r["std_main"])
        subs, stds = r.get("grad_sub") or [], r.get("std_sub") or []
        out["grad_sub"].append(statistics.mean(subs) if subs else None)
        out["std_sub"].append(statistics.mean(stds) if stds else None)
        out["std_sub_min"].append(min(stds) if stds else None)
        out["grad_ratio"].append(sum(subs) / r["grad_main"] if subs and r.get("grad_main") else None)
        cos = r.get("cos_sub") or []
        out["cos_sub"].append(statistics.mean(cos) if cos else None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="+")
    p.add_argument("--out", type=Path, default=Path("docs/figures/step_stats"))
    p.add_argument("--title", default=None)
    p.add_argument("--smooth", type=int, default=1,
                   help="moving average over this many instrumented steps (the JSON keeps the raw values)")
    args = p.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"{len(labels)} labels for {len(args.runs)} runs")
    data = {label: series(read_steps(run)) for label, run in zip(labels, args.runs)}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    panels = [(0, "loss_main", "-", ""), (1, "grad_main", "-", ": main loss"),
              (1, "grad_sub", "--", ": one sub-network loss (mean)"), (2, "std_main", "-", ": main network"),
              (2, "std_sub", "--", ": sub-networks (mean)"), (2, "std_sub_min", ":", ": sub-networks (min)"),
              (3, "grad_ratio", "-", ""), (4, "cos_sub", "-", "")]
    for (label, s), color in zip(data.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for i, key, style, suffix in panels:
            pts = [(x, y) for x, y in zip(s["step"], s[key]) if y is not None]
            if pts:
                xs, ys = zip(*pts)
                k = max(1, args.smooth)
                ys = [statistics.mean(ys[max(0, j - k + 1):j + 1]) for j in range(len(ys))]
                axes[i].plot(xs, ys, style, color=color, label=f"{label}{suffix}")
    titles = ["main-network CE loss", "gradient norm per loss", "logit std over classes",
              "sum of sub-network grad norms / main grad norm",
              "cosine(sub-network gradient, main gradient)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    axes[4].axhline(0.0, color="black", linewidth=0.8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"runs": {label: str(run) for label, run in zip(labels, args.runs)}, "series": data}, indent=1) + "\n")
    print(f"-> {args.out.with_suffix('.png')}, {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
