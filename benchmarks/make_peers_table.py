"""The peers comparison (issue 19) from its records: "Which method for which goal?" and the fronts of all depths.

Reads ``benchmarks/results/peers/peers_<variant>_s<seed>.json`` (written by ``bench_peers.py``) and builds, for
the claim seeds (10, 11, 12) and separately for the tuning seeds (0, 1):

* one line per variant: method, budget, epochs, seeds, main test accuracy, mean accuracy over the 27 depth
  configurations, the front area (``stimulative.deploy.pareto.front_area``: mean accuracy of the upper
  accuracy-FLOPs front over a log-FLOPs axis) and the (1,1,1) accuracy, each mean ± std over seeds;
* the goals: best main network at equal epochs, at equal time (ST++'s wall-clock), best front of depths per
  FLOPs, cheapest usable ResNet-8 inside a ResNet-20; the measured winner of each with every method's numbers;
* ``fronts.png``: accuracy against MFLOPs of every depth (mean over seeds) and each method's upper front.

    python benchmarks/make_peers_table.py                  # print
    python benchmarks/make_peers_table.py --write docs/peers.md   # replace the text between the peers markers

The block lives in ``docs/peers.md`` (the docs site's "Which method for which goal?"); its links are relative to
that page (``docs/``), so the block belongs in a page of ``docs/``, not in the README.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from stimulative.deploy.pareto import front_area

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "peers"
START, END = "<!-- peers-table:start (benchmarks/make_peers_table.py) -->", "<!-- peers-table:end -->"
CLAIM_SEEDS, TUNING_SEEDS = (10, 11, 12), (0, 1)
SMALLEST = "1,1,1"


def load(results: Path = RESULTS) -> list[dict]:
    out = []
    for path in sorted(results.glob("peers_*_s*.json")):
        rec = json.loads(path.read_text())
        whole = rec["method"] != "alone" and len(rec["depth_acc"]) > 1  # a network of the full 27-depth space
        rec["front_area"] = front_area(rec["depth_acc"], rec["depth_mflops"]) if whole else None
        rec["mean_depth_acc"] = statistics.fmean(rec["depth_acc"].values()) if whole else None
        out.append(rec)
    return out


def _stat(values: list[float | None]) -> tuple[float, float, int] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def _fmt(stat: tuple[float, float, int] | None, spec: str = "{:.2f}") -> str:
    if stat is None:
        return "–"
    mean, std, n = stat
    return f"{spec.format(mean)} ± {spec.format(std)}" if n > 1 else spec.format(mean)


def _image_epochs(rec: dict) -> int:
    """Training images x epochs of a run (records older than the field are of the 5,000-image setting)."""
    return int(rec.get("image_epochs", 5000 * rec["epochs"]))


def label(rec: dict) -> str:
    """Method and its setting, e.g. ``stochastic depth p_L=0.5`` or ``ST++ + subnet_fraction 0.5``."""
    cmd, method = rec["command"], rec["method"]
    drop = re.search(r"model\.drop_path=([\d.]+)", cmd)
    if rec["variant"].startswith("alone"):
        d = re.search(r"blocks_per_stage: \[(\d)", cmd).group(1)
        return f"ResNet-{6 * int(d) + 2} alone"
    extra = []
    if method in ("stochastic depth", "LayerDrop") and drop:
        extra.append(("p_L=" if method == "stochastic depth" else "p=") + drop.group(1))
    elif drop:
        extra.append(f"+ stochastic depth {drop.group(1)}")
    for key in ("subnet_fraction", "subnet_every"):
        m = re.search(rf"st\.{key}=([\d.]+)", cmd)
        if m:
            extra.append(f"{key} {m.group(1)}")
    return " ".join([method, *extra])


def _smallest(rec: dict) -> float | None:
    """Accuracy of the (1,1,1) ResNet-8: inside a ResNet-20, or ResNet-8 trained alone (a depth trained alone
    measures only itself: the (1,1,1) inside ResNet-14 alone is not a ResNet-8 anyone would deploy)."""
    if rec["method"] == "alone" and label(rec) != "ResNet-8 alone":
        return None
    return rec["depth_acc"].get(SMALLEST)


def summarise(records: list[dict], seeds: tuple[int, ...]) -> list[dict]:
    """One row per variant over ``seeds``, in the order variants first appear in bench_peers.VARIANTS."""
    by_variant: dict[tuple[str, int], list[dict]] = {}
    for rec in records:  # one row per variant and length (a re-measured time ratio makes another row)
        if rec["seed"] in seeds:
            by_variant.setdefault((rec["variant"], rec["epochs"]), []).append(rec)
    rows = []
    for (variant, _), recs in by_variant.items():
        values = {"main": lambda r: r["test_acc"], "mean_depth": lambda r: r["mean_depth_acc"],
                  "front": lambda r: r["front_area"], "smallest": _smallest}
        # each metric per seed (the paired lead reads these); the row's mean ± std is taken from them
        per_seed = {key: {r["seed"]: v for r in recs if (v := get(r)) is not None} for key, get in values.items()}
        rows.append({
            "variant": variant, "label": label(recs[0]), "method": recs[0]["method"], "budget": recs[0]["budget"],
            "epochs": recs[0]["epochs"], "seeds": sorted(r["seed"] for r in recs),
            **{key: _stat(list(by_seed.values())) for key, by_seed in per_seed.items()}, "per_seed": per_seed,
            "train_s": statistics.fmean(r["train_s"] for r in recs), "command": recs[0]["command"],
        })
    order = {v: i for i, v in enumerate(_variant_order())}
    return sorted(rows, key=lambda r: order.get(r["variant"], len(order)))


def _variant_order() -> list[str]:
    text = (REPO / "benchmarks" / "bench_peers.py").read_text()
    block = text[text.index("VARIANTS: dict"):text.index("TUNING =")]
    return re.findall(r'^\s+"([a-z0-9_]+)": \(', block, flags=re.M)


def table(rows: list[dict]) -> list[str]:
    lines = ["| method | budget | epochs | seeds | main | mean of 27 depths | front area | ResNet-8 (1,1,1) |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['budget']} | {r['epochs']} | {','.join(map(str, r['seeds']))} | "
                     f"{_fmt(r['main'])} | {_fmt(r['mean_depth'])} | {_fmt(r['front'])} | {_fmt(r['smallest'])} |")
    return lines


GOALS = [
    ("best main network at equal epochs", "main", lambda r: r["budget"] == "equal epochs" and r["method"] != "alone"),
    ("best main network at equal time (ST++'s wall-clock)", "main",
     lambda r: r["budget"] == "equal time" or r["variant"] == "stpp"),
    ("best front of all depths per FLOPs, at equal time", "front",
     lambda r: (r["budget"] == "equal time" or r["variant"] == "stpp") and r["front"] is not None),
    ("cheapest usable ResNet-8 inside a ResNet-20 (its (1,1,1); 15 epochs unless marked)", "smallest",
     lambda r: r["smallest"] is not None),
]


def lead(win: dict, runner: dict, key: str) -> str:
    """The winner's lead over the runner-up on the seeds both have, paired seed by seed (the runs of one seed share
    the data order and test images): mean ± std of the differences, and whether it exceeds twice its std (judged
    from 3 seeds on)."""
    a, b = win["per_seed"][key], runner["per_seed"][key]
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return f"no seed in common with {runner['label']}"
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    if len(diffs) < 3:  # the std of one or two differences says too little
        verdict = f"{len(diffs)} seed{'s' if len(diffs) > 1 else ''}: too few to judge"
    elif mean > 2 * std:
        verdict = "clear (more than twice its std)"
    elif mean < -2 * std:  # the winner by mean wins through seeds the runner-up lacks
        verdict = "the runner-up is ahead on these seeds"
    else:
        verdict = "within seed noise"
    return (f"{mean:+.2f} ± {std:.2f} over {_named(runner)} (paired, seeds {','.join(map(str, seeds))}): "
            f"{verdict}")


def _named(r: dict) -> str:
    """The label with the epochs when they are not the setting's 15 (equal time), e.g. ``CT (38 ep)``."""
    return f"{r['label']}{' (' + str(r['epochs']) + ' ep)' if r['budget'] == 'equal time' else ''}"


def goals(rows: list[dict]) -> list[str]:
    lines = ["| goal | measured winner | lead over the runner-up | every method (mean ± std) |", "|---|---|---|---|"]
    for goal, key, keep in GOALS:
        cands = [r for r in rows if keep(r) and r[key] is not None]
        if not cands:
            continue
        cands.sort(key=lambda r: -r[key][0])
        win = cands[0]
        runner = next((r for r in cands[1:] if r["variant"] != win["variant"]), None)  # another method
        ahead = lead(win, runner, key) if runner is not None else "–"
        others = "; ".join(f"{_named(r)} {_fmt(r[key])}" for r in cands)
        lines.append(f"| {goal} | **{_named(win)}** {_fmt(win[key])} | {ahead} | {others} |")
    return lines


def undominated(rows: list[dict]) -> list[str]:
    """At equal time (ST++'s wall-clock), the methods no other beats on both the main network and the front area
    (means over seeds): the trade-off a user chooses along."""
    cands = [r for r in rows if (r["budget"] == "equal time" or r["variant"] == "stpp") and r["main"] and r["front"]]
    if len(cands) < 2:
        return []

    def beats(a: dict, b: dict) -> bool:
        return (a["main"][0] >= b["main"][0] and a["front"][0] >= b["front"][0]
                and (a["main"][0] > b["main"][0] or a["front"][0] > b["front"][0]))

    keep = [r for r in cands if not any(beats(o, r) for o in cands if o is not r)]
    keep.sort(key=lambda r: -r["main"][0])
    names = "; ".join(f"{r['label']} ({r['epochs']} ep): main {_fmt(r['main'])}, front {_fmt(r['front'])}" for r in keep)
    return [f"At equal time no method beats these on both the main network and the front (the trade-off to choose "
            f"along, best main first): {names}."]


def budget_rows(records: list[dict]) -> list[dict]:
    """Delta vs CT of the same setting and seed (equal epochs): ST++ and the peers, main and mean over depths."""
    ct = {(r.get("setting_name", "r20"), r["seed"]): r for r in records if r["variant"] == "ct"}
    rows: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("setting_name", "r20"), r["seed"])
        if r["budget"] != "equal epochs" or r["variant"] in ("ct",) or r["method"] == "alone" or key not in ct:
            continue
        base = ct[key]
        row = rows.setdefault((key[0], r["variant"]), {
            "setting": key[0], "variant": r["variant"], "label": label(r), "epochs": r["epochs"],
            "image_epochs": _image_epochs(r), "train_images": r.get("train_images", 5000),
            "d_main": [], "d_depths": [], "seeds": []})
        row["d_main"].append(r["test_acc"] - base["test_acc"])
        if r["mean_depth_acc"] is not None and base["mean_depth_acc"] is not None:
            row["d_depths"].append(r["mean_depth_acc"] - base["mean_depth_acc"])
        row["seeds"].append(r["seed"])
    return sorted(rows.values(), key=lambda r: (r["image_epochs"], r["setting"], r["variant"]))


def budget_table(rows: list[dict]) -> list[str]:
    lines = ["| setting | image-epochs | method | seeds | Δ main vs CT | Δ mean of depths vs CT |",
             "|---|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['image_epochs']:,} | {r['label']} | {','.join(map(str, r['seeds']))} | "
                     f"{_fmt(_stat(r['d_main']))} | {_fmt(_stat(r['d_depths']))} |")
    return lines


FIT_VARIANTS = ("ct", "stpp", "sd05")


def fit_table(records: list[dict]) -> list[str]:
    """How far the main network overfits at each budget (equal epochs, the records' last epoch): train accuracy,
    test accuracy, their gap and the test loss, mean +- std over seeds; empty without ``train_acc`` records."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["budget"] == "equal epochs" and r["variant"] in FIT_VARIANTS and r.get("train_acc") is not None:
            groups.setdefault((_image_epochs(r), r.get("setting_name", "r20"),
                               FIT_VARIANTS.index(r["variant"])), []).append(r)
    if not any(key[1] != "r20" for key in groups):
        return []
    lines = ["| setting | image-epochs | method | seeds | train acc | test acc | train − test | test loss |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for (images, setting, _), rs in sorted(groups.items()):
        cols = [_fmt(_stat([r[k] for r in rs])) for k in ("train_acc", "test_acc")]
        gap = _fmt(_stat([r["train_acc"] - r["test_acc"] for r in rs]))
        loss = _fmt(_stat([r["test_loss"] for r in rs]), "{:.3f}")
        lines.append(f"| {setting} | {images:,} | {label(rs[0])} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{cols[0]} | {cols[1]} | {gap} | {loss} |")
    return lines


def plot_budget(results: Path = RESULTS) -> Path | None:
    """Delta vs CT against image-epochs (mean +- std over seeds), main network and mean over depths; one colour
    per method, one line per training-set size (circles: more epochs on 5,000 images; squares: more images), so
    that two settings of equal image-epochs (5k x 45, 15k x 15) stay apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in budget_rows(load(results)) if r["variant"] in ("stpp", "sd05", "sd01", "ld02", "ld01")]
    if len({r["image_epochs"] for r in rows}) < 2:  # one budget is no curve
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key, title in ((axes[0], "d_main", "main network"), (axes[1], "d_depths", "mean over the 27 depths")):
        for i, name in enumerate(sorted({r["label"] for r in rows})):
            mine = [(r, _stat(r[key])) for r in rows if r["label"] == name]
            for images in sorted({r["train_images"] for r, _ in mine}):
                # more data starts from the 5k x 15 point (dashed); more epochs on 5k images is its own line
                pts = [(r["image_epochs"], st) for r, st in mine if st and
                       (r["train_images"] == images or (images != 5000 and r["setting"] == "r20"))]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts],
                                marker="o" if images == 5000 else "s", ls="-" if images == 5000 else "--",
                                color=f"C{i}", capsize=3,
                                label=name if images == 5000 else f"{name}, {images:,} images")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training images x epochs")
        ax.set_title(f"Δ vs CT at equal epochs: {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy points")
    axes[0].legend(fontsize=7)
    path = results / "budget.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# the crossing estimate: each ST form against each peer given ST++'s time, wherever both ran at two budgets or more
CROSSING_PEERS = (("sd05_time", "stochastic depth p_L=0.5"), ("ct_time", "CT"))
ST_FORMS = ("stpp", "stpp_frac50_time")
BOOTSTRAP = 2000
FAR = 100  # crossings further than FAR x the largest measured budget are shown as "beyond"


def _gaps(records: list[dict], st_variant: str, peer: str, metric: str,
          seeds: tuple[int, ...] = CLAIM_SEEDS) -> dict[str, tuple[int, list[float]]]:
    """``{setting: (image-epochs, [ST form - peer of each seed])}`` at equal time, over the settings with both runs
    on the same seed (the image-epochs are the ST form's: the budget both were given)."""
    by = {(r.get("setting_name", "r20"), r["variant"], r["seed"]): r for r in records if r["seed"] in seeds}
    gaps: dict[str, tuple[int, list[float]]] = {}
    for (setting, variant, seed), r in sorted(by.items()):
        other = by.get((setting, peer, seed))
        if variant != st_variant or other is None or r.get(metric) is None or other.get(metric) is None:
            continue
        budget = _image_epochs(r)
        gaps.setdefault(setting, (budget, []))[1].append(r[metric] - other[metric])
    return gaps


def _percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of sorted values by rank (no interpolation, so +inf entries stay usable)."""
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def crossing(points: list[tuple[int, list[float]]], seed: int = 0) -> dict | None:
    """Where the line ``gap = a + b log10(image-epochs)`` (least squares through each setting's mean gap) reaches
    0, with its uncertainty from a bootstrap over seeds within each setting. None with fewer than 2 budgets.

    Returns ``{"slope", "now", "cross", "low", "high", "share_closing", "budgets"}``: ``slope`` in points per
    decade of image-epochs; ``now`` the mean gap at the largest budget; when ``now`` < 0, ``cross`` is the
    image-epochs where the fitted line is 0 if it rises (``slope`` > 0; it may lie inside the measured range when
    the fit and the largest budget's mean disagree), else None; ``low``/``high`` the 16th/84th percentiles of that
    crossing over all resamples, a resample whose line does not rise counting as never (``high`` None: more than
    16% of resamples never cross); ``share_closing`` the share of resamples whose line rises.
    """
    import numpy as np

    points = [(b, g) for b, g in points if g]
    budgets = sorted({b for b, _ in points})
    if len(budgets) < 2:
        return None
    x = np.log10(np.array([b for b, _ in points], dtype=float))
    top = x == np.log10(budgets[-1])

    def fit(means: np.ndarray) -> tuple[float, float]:
        """Slope and the log10 budget where the line is 0 (+inf when it does not rise)."""
        b, a = np.polyfit(x, means, 1)
        return float(b), float(-a / b) if b > 0 else float("inf")

    means = np.array([np.mean(g) for _, g in points])
    slope, root = fit(means)
    now = float(np.mean(means[top]))
    out = {"slope": slope, "now": now, "budgets": budgets, "cross": None, "low": None, "high": None,
           "share_closing": None}
    if now >= 0:
        return out
    rng = np.random.default_rng(seed)
    roots = sorted(fit(np.array([np.mean(rng.choice(g, size=len(g))) for _, g in points]))[1]
                   for _ in range(BOOTSTRAP))
    low, high = _percentile(roots, 0.16), _percentile(roots, 0.84)
    out.update(cross=10 ** root if np.isfinite(root) else None, share_closing=sum(np.isfinite(roots)) / len(roots),
               low=10 ** low if np.isfinite(low) else None, high=10 ** high if np.isfinite(high) else None)
    return out


def _far(image_epochs: float, top: int) -> str:
    """A crossing in image-epochs; a log-linear fit says nothing FAR x beyond the largest measured budget."""
    return f"{image_epochs:,.0f}" if image_epochs <= FAR * top else f"beyond {FAR * top:,} ({FAR}x the largest budget)"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def crossing_lines(records: list[dict]) -> list[str]:
    lines = []
    for peer, peer_label in CROSSING_PEERS:
        for metric, what in (("test_acc", "main network"), ("mean_depth_acc", "mean over the 27 depths")):
            for form in ST_FORMS:
                gaps = _gaps(records, form, peer, metric)
                c = crossing(list(gaps.values()))
                if c is None:
                    continue
                st_label = next(label(r) for r in records if r["variant"] == form)
                head = (f"- {st_label} − {peer_label} at equal time, {what}: {c['now']:+.2f} points at "
                        f"{c['budgets'][-1]:,} image-epochs, {c['slope']:+.2f} per decade of budget "
                        f"({', '.join(f'{s} {b:,}: {_seeds(len(g))}' for s, (b, g) in gaps.items())}); ")
                top = c["budgets"][-1]
                if c["now"] >= 0:
                    lines.append(head + "ST is ahead at the largest budget.")
                elif c["cross"] is None:
                    lines.append(head + f"no crossing visible: the gap does not shrink with the budget (it does in "
                                 f"{c['share_closing']:.0%} of bootstrap resamples).")
                else:
                    if c["low"] is None:
                        band = "never (most resamples do not close)"
                    else:
                        band = f"{_far(c['low'], top)} to " + (_far(c["high"], top) if c["high"] is not None else
                                                         "never (more than 16% of resamples do not close)")
                    where = ("inside the measured budgets (the fit and the largest budget's mean disagree)"
                             if c["cross"] <= c["budgets"][-1] else "an extrapolation, not a measurement")
                    at = (f"at about {c['cross']:,.0f}" if c["cross"] <= FAR * top else
                          f"only {_far(c['cross'], top)}")
                    lines.append(head + f"the line reaches 0 {at} image-epochs, {where}; "
                                 f"16-84% over bootstrap resamples: {band}.")
    return lines


def build(results: Path = RESULTS) -> str:
    records = all_records = load(results)
    growth = budget_rows(records)
    records = [r for r in records if r.get("setting_name", "r20") == "r20"]
    claim, tuning = summarise(records, CLAIM_SEEDS), summarise(records, TUNING_SEEDS)
    out = [START, ""]
    n_claim = sum(1 for r in records if r["seed"] in CLAIM_SEEDS)
    out.append(f"CIFAR-10 ResNet-20, 5,000 training images, 15 epochs (equal time: each method given ST++'s "
               f"wall-clock from measured epoch times), 2,000 test images; every depth's accuracy after BN "
               f"re-estimation. {len(records)} runs so far ({n_claim} on the claim seeds 10-12). Regenerate: "
               "`python benchmarks/make_peers_table.py --write docs/peers.md`; runs: `python benchmarks/bench_peers.py`.")
    out.append("")
    if claim:
        short = sum(1 for r in claim if len(r["seeds"]) < 3)
        note = f"; provisional: {short} of {len(claim)} lines have fewer than 3 seeds" if short else ""
        out += [f"**Which method for which goal?** (seeds 10-12{note})", "", *goals(claim), ""]
        trade = undominated(claim)
        out += [*trade, ""] if trade else []
        out += [*table(claim), ""]
    else:
        out += ["The claim seeds (10-12) are still running; nothing is concluded yet.", ""]
    if tuning:
        out += ["Tuning on seeds 0-1 (ST++'s cost lever with the better main network here is the one run on seeds "
                "10-12; both rates of each peer are run there, so each goal sees each peer's better rate):", "",
                *goals(tuning), "", *table(tuning), ""]
    if any(r["setting"] != "r20" for r in growth):
        out += ["As the budget grows (Δ vs CT of the same seed at equal epochs; `--setting` of bench_peers.py):", "",
                *budget_table(growth), ""]
        if (results / "budget.png").exists():
            out += ["![Δ vs CT against the budget](../benchmarks/results/peers/budget.png)", ""]
        for setting in sorted({r.get("setting_name", "r20") for r in all_records if r["budget"] == "equal time"}
                              - {"r20"}):
            mine = [r for r in all_records if r.get("setting_name") == setting]
            rows = summarise(mine, CLAIM_SEEDS)
            out += [f"Which method for which goal at `--setting {setting}` ({mine[0]['setting']}; equal "
                    "time from the same measured epoch times):", "", *goals(rows), "", *table(rows), ""]
        fit = fit_table(all_records)
        if fit:
            out += ["How far the main network overfits (last epoch; train accuracy on the augmented batches, with the "
                    "method's drops or sub-network losses as trained):", "", *fit, ""]
        cross = crossing_lines(all_records)
        if cross:
            out += ["Where would ST cross at equal time? (gap of each seed, a line in log budget through the "
                    "budgets' means, bootstrap over seeds):", "", *cross, ""]
    out.append(END)
    return "\n".join(out)


# colour per method, line style per setting of it (the stronger rate solid), in both panels of fronts.png
FRONT_STYLE = {
    "ct": ("black", "-"), "ct_time": ("black", "-"),
    "sd05": ("tab:blue", "-"), "sd05_time": ("tab:blue", "-"), "sd01": ("tab:blue", "--"), "sd01_time": ("tab:blue", "--"),
    "ld02": ("tab:orange", "-"), "ld02_time": ("tab:orange", "-"), "ld01": ("tab:orange", "--"),
    "ld01_time": ("tab:orange", "--"), "st": ("tab:green", "-"), "stpp": ("tab:red", "-"),
    "stpp_frac50_time": ("tab:red", "--"), "stpp_every2_time": ("tab:red", ":"), "stpp_sd_time": ("tab:purple", "-."),
}


def plot_fronts(results: Path = RESULTS, seeds: tuple[int, ...] = CLAIM_SEEDS) -> Path | None:
    """Upper accuracy-FLOPs fronts of all 27 depths (mean over seeds): equal epochs (with the depths trained
    alone as stars at their own FLOPs) and equal time (ST++'s wall-clock), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [r for r in load(results) if r.get("setting_name", "r20") == "r20"]
    records = [r for r in everything if r["seed"] in seeds]
    if not any(r["method"] != "alone" for r in records):
        records = [r for r in everything if r["seed"] in TUNING_SEEDS]
    if not any(r["method"] != "alone" for r in records):
        return None
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["epochs"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    panels = ((axes[0], "equal epochs (15)", lambda r: r["budget"] == "equal epochs"),
              (axes[1], "equal time (ST++'s wall-clock)", lambda r: r["budget"] == "equal time" or r["variant"] == "stpp"))
    for ax, title, keep in panels:
        for (variant, epochs), recs in groups.items():
            if not keep(recs[0]):
                continue
            name = f"{label(recs[0])} ({epochs} ep), n={len(recs)}"
            if recs[0]["method"] == "alone":  # one network: a star at its own depth's FLOPs
                full = max(recs[0]["depth_mflops"], key=lambda c: recs[0]["depth_mflops"][c])
                ax.scatter([recs[0]["depth_mflops"][full]], [statistics.fmean(r["test_acc"] for r in recs)],
                           marker="*", s=140, color="black" if variant == "alone8" else "dimgray", zorder=5,
                           label=name)
                continue
            configs = sorted(recs[0]["depth_acc"], key=lambda c: recs[0]["depth_mflops"][c])
            flops = [recs[0]["depth_mflops"][c] for c in configs]
            acc = [statistics.fmean(r["depth_acc"][c] for r in recs) for c in configs]
            front, best = [], float("-inf")
            for a in acc:
                best = max(best, a)
                front.append(best)
            color, style = FRONT_STYLE.get(variant, ("gray", "-"))
            ax.step(flops, front, where="post", color=color, linestyle=style, label=name)
            ax.scatter(flops, acc, s=6, color=color, alpha=0.25)
        ax.set_xscale("log")
        ax.set_xlabel("MFLOPs per image (32 px)")
        ax.set_title(f"{title}: upper fronts of all depths (dots: each depth)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), BN re-estimated, mean over seeds")
    path = results / "fronts.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", metavar="FILE",
                   help="replace the text between the peers-table markers of FILE (docs/peers.md)")
    args = p.parse_args()
    plots = f"-> {plot_fronts()}, {plot_budget()}"  # first: the text links budget.png once it exists
    text = build()
    if args.write:
        doc = Path(args.write)
        body = doc.read_text()
        start, end = body.index(START), body.index(END) + len(END)
        doc.write_text(body[:start] + text + body[end:])
        print(f"wrote {args.write}")
    else:
        print(text)
    print(plots)


if __name__ == "__main__":
    main()
