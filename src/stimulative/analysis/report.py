"""A self-contained comparison report of training runs: one HTML file (images embedded) plus report.md.

The report reads what runs and analyses already wrote (``config.yaml``, ``metrics.jsonl``, ``loafing.json``,
``logits.json``, ``erf.json``), re-draws the figures with one colour per run, and explains each figure in a
caption so that a reader who has not seen the code can follow it.

Example:
    >>> runs = read_runs(["runs/ct", "runs/stpp"])                                  # doctest: +SKIP
    >>> write_report(runs, "report", analyses=find_analyses(runs, "report"))        # doctest: +SKIP
    PosixPath('report/report.html')
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..io import atomic_write_text, read_json, read_jsonl
from ..runs import Run, unique_names
from ..train.checkpoint import load_checkpoint
from ..train.log import SUBNET_METRIC_PREFIX, plot_training_curves, run_colors, subnet_metric_label
from ..train.state import SavedRun
from .erf import erf_analysis, write_erf
from .loafing import loafing_analysis, write_loafing
from .logits import logits_analysis, norms_by_blocks, write_logits
from .plots import plot_erf, plot_loafing, plot_logits

__all__ = ["RunRecord", "read_runs", "config_diff", "final_accuracy_rows", "find_analyses", "write_report",
           "compute_analysis", "ANALYSES"]

ANALYSES = ("loafing", "logits", "erf")


@dataclass
class RunRecord:
    """What the report knows about one run: its name, folder, config (nested dict) and metric history."""

    name: str
    path: Path
    config: dict
    history: list[dict] = field(default_factory=list)
    best_acc: float | None = None


def _read_run(path: str | Path) -> RunRecord:
    """Read a run directory (``config.yaml``, ``metrics.jsonl``) or, failing that, its checkpoint.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: neither a config nor a checkpoint is there.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    run_dir = path if path.is_dir() else path.parent
    config, history, best = None, [], None
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{str(run_dir / 'config.yaml')!r} is not valid YAML: {err}") from None
    if (run_dir / "metrics.jsonl").is_file():
        history = read_jsonl(run_dir / "metrics.jsonl")
    if config is None or not history:
        has_ckpt = path.is_file() or any((run_dir / n).is_file() for n in ("best.pt", "last.pt"))
        if not has_ckpt and config is None:
            raise ValueError(f"{str(path)!r} is not a run directory: no config.yaml, best.pt or last.pt")
        if has_ckpt:
            saved = SavedRun.of(load_checkpoint(path))
            config = config or saved.config or {}
            history = history or saved.history
            best = saved.best_acc
    accs = [r["test_acc"] for r in history if isinstance(r.get("test_acc"), (int, float))]
    if accs:
        best = max(accs)
    if not isinstance(config, dict):
        raise ValueError(f"the config of {str(path)!r} is not a mapping")
    return RunRecord(str(config.get("name") or run_dir.name), path, config, history, best)


def read_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """``_read_run`` for each path, with names made unique (``name``, ``name (2)``) as the analyses do."""
    runs = [_read_run(p) for p in paths]
    unique_names(runs)
    return runs


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


_IGNORED_KEYS = ("name", "out_dir", "resume")


def config_diff(runs: Sequence[RunRecord]) -> list[tuple[str, list[Any]]]:
    """The config keys (dotted) whose values differ between runs, with each run's value (None when absent)."""
    flat = [_flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for key in keys:
        if key in _IGNORED_KEYS:
            continue
        values = [f.get(key) for f in flat]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
               for v in values[1:]):
            out.append((key, values))
    return out


def method_label(config: dict) -> str:
    """Short description of the training method of a config: CT, ST or ST++ ingredients."""
    st = config.get("st") or {}
    n = int(st.get("num_subnets") or 0)
    if n == 0:
        return "CT (common training)"
    kl_norm = st.get("kl_norm", st.get("kl", "plain"))  # "kl": a run of an older release
    parts = [f"{n} sub-network{'s' if n > 1 else ''}/step", f"KL {kl_norm}"]
    if float(st.get("min_input_scale") or 1.0) < 1.0:
        parts.append(f"smaller inputs (scale >= {st['min_input_scale']})")
    if st.get("sampling", "ordered") != "ordered":
        parts.append(f"{st['sampling']} sampling")
    return "ST: " + ", ".join(parts)


def final_accuracy_rows(runs: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the final-accuracy table (last evaluated epoch, best, sub-networks during training)."""
    sub_keys = sorted({k for r in runs for rec in r.history[-1:] for k in rec if k.startswith(SUBNET_METRIC_PREFIX)})
    header = ["run", "model", "method", "epochs", "final test acc (%)", "best test acc (%)"]
    header += [f"sub-network {subnet_metric_label(k)} (%)" for k in sub_keys]
    rows = []
    for r in runs:
        evaluated = [rec for rec in r.history if isinstance(rec.get("test_acc"), (int, float))]
        last = evaluated[-1] if evaluated else {}
        model = (r.config.get("model") or {}).get("name", "?")
        epochs = r.history[-1].get("epoch", "?") if r.history else "?"
        row = [r.name, str(model), method_label(r.config), str(epochs), _num(last.get("test_acc")),
               _num(r.best_acc)]
        row += [_num(last.get(k)) for k in sub_keys]
        rows.append(row)
    return header, rows


def _num(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "-" if value is None else str(value)


# ------------------------------------------------------------------------------------------------------------
# Computing, finding and merging analyses
# ------------------------------------------------------------------------------------------------------------

def compute_analysis(kind: str, runs: Sequence[Run], out_dir: str | Path, *, bn_images: int = 2000,
                     sample: int | None = None, seed: int = 0, device: str = "cpu", erf_images: int = 64,
                     erf_sizes: str | None = None, overrides: Sequence[str] = (), progress: bool = True) -> list[Path]:
    """Compute one analysis (``loafing``, ``logits`` or ``erf``) of the opened runs together into ``out_dir``.

    Loafing and logits use every sub-network when the space is small, else ``sample`` of them; the ERF the full,
    a middle and the smallest network at ``erf_sizes``.
    """
    common = {"seed": seed, "bn_images": bn_images, "device": device, "overrides": overrides}
    if kind == "loafing":
        return write_loafing(loafing_analysis(runs, sample=sample, progress=progress, **common), out_dir)
    if kind == "logits":
        return write_logits(logits_analysis(runs, sample=sample, progress=progress, **common), out_dir)
    if kind == "erf":
        return write_erf(erf_analysis(runs, sizes=erf_sizes, images=erf_images, **common), out_dir)
    raise ValueError(f"unknown analysis {kind!r}; valid: {', '.join(ANALYSES)}")


def find_analyses(runs: Sequence[RunRecord], out_dir: str | Path) -> dict[str, dict]:
    """Analysis results for these runs: ``out_dir/<kind>.json`` first, else merged ``RUN/analysis/<kind>.json``.

    Rows of runs not in ``runs`` are dropped (the "alone" rows of the loafing table are kept).
    """
    names = {r.name for r in runs}
    found: dict[str, dict] = {}
    for kind in ANALYSES:
        sources = [Path(out_dir) / f"{kind}.json"]
        if not sources[0].is_file():
            sources = [_run_dir(r) / "analysis" / f"{kind}.json" for r in runs]
        parts = [read_json(p) for p in sources if p.is_file()]
        if not parts:
            continue
        merged = _merge(kind, parts, names)
        if merged:
            found[kind] = merged
    return found


def _run_dir(run: RunRecord) -> Path:
    return run.path if run.path.is_dir() else run.path.parent


def _merge(kind: str, parts: list[dict], names: set[str]) -> dict | None:
    list_key = "entries" if kind == "erf" else "rows"
    seen, items = set(), []
    for part in parts:
        for item in part.get(list_key, []):
            key = (item.get("run"), item.get("kind"), item.get("depths"), item.get("size"))
            keep = item.get("run") in names or item.get("kind") == "alone"
            if keep and key not in seen:
                seen.add(key)
                items.append(item)
    if not any(i.get("run") in names for i in items):
        return None
    merged: dict[str, Any] = {list_key: items, "settings": parts[0].get("settings", {})}
    if kind == "loafing":
        merged["summary"] = [s for p in parts for s in p.get("summary", []) if s.get("run") in names]
    return merged


# ------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------

INTRO = (
    "This report compares training runs of residual networks. A residual network behaves like an ensemble of "
    "shallower sub-networks: skipping the last blocks of a stage leaves a working network, because every "
    "skipped block becomes an identity shortcut. <b>Common training (CT)</b> optimises only the full network. "
    "<b>Stimulative training (ST, ST++)</b> also trains a randomly sampled sub-network at every step to match "
    "the full network's prediction (ST++ adds direction-only \"KL-\" matching, several sub-networks per step "
    "and smaller inputs for the sub-networks). Each figure below has a caption saying what it shows and what "
    "to look for."
)

CAPTIONS = {
    "curves": (
        "Per-epoch losses (left) and top-1 accuracies (right) of every run, read from its metrics.jsonl. "
        "Colour = run, line style = metric. \"Sub-network\" curves are the depth configurations evaluated "
        "during training (eval_depths). <b>Look for:</b> whether the full network of the ST runs reaches the "
        "accuracy of CT or better, and whether their sub-networks stay close to the full network."
    ),
    "loafing": (
        "<b>Network loafing.</b> Each faint dot is one sub-network (first d<sub>i</sub> blocks of every stage "
        "kept), taken out of the trained network without any retraining and evaluated on the test set; the "
        "line is the mean over sub-networks with the same number of blocks. Left: with the full network's "
        "BatchNorm statistics. Right: with BatchNorm statistics re-estimated for each sub-network on training "
        "images, so a drop there is not merely a statistics mismatch. Black stars, when present, are the same "
        "architectures trained on their own. After common training the sub-networks are far worse than when "
        "trained alone: they \"loaf\" inside the group (Ye et al., Stimulative Training++). <b>Look for:</b> a "
        "flat curve close to the full network's accuracy (little loafing) versus a steep fall as blocks are "
        "removed (strong loafing). \"Mean drop\" below = full-network accuracy minus the mean accuracy of the "
        "other evaluated sub-networks, in percentage points; \"gap vs alone\" = accuracy trained alone minus "
        "accuracy inside the network, averaged over the matched sub-networks."
    ),
    "logits": (
        "<b>Logit amplitude.</b> The L2 norm of the logit vector (the network's output before softmax), averaged "
        "over test images, for sub-networks grouped by how many blocks they run; error bars are the standard "
        "deviation over images, the right panel divides by the full network's value. ST++ observes that "
        "networks of different depth produce logits of different size; plain KL distillation would force every "
        "sub-network to match the full network's magnitude as well as its direction, so ST++'s KL- compares "
        "normalised logits (direction only). <b>Look for:</b> rising curves (deeper sub-networks, larger "
        "logits) and how far the smallest sub-networks sit below 1.0 on the right."
    ),
    "erf": (
        "<b>Effective receptive field</b> (Luo et al. 2016): how strongly each input pixel influences the centre "
        "unit of the last residual stage's feature map, i.e. the absolute gradient of that unit with respect "
        "to the input, summed over colour channels and averaged over test images (eval mode: BatchNorm uses "
        "the stored statistics). Rows: run and depth configuration; columns: input size (test images resized "
        "bilinearly). Each map is scaled to its own maximum; the dashed circle holds 90% of the gradient mass "
        "(its radius r90 is also given as a fraction of the input size). <b>Look for:</b> shallow sub-networks "
        "have small ERFs, and a smaller input makes the same network cover a larger fraction of the image. "
        "This is why ST++ gives sub-networks random smaller inputs."
    ),
}


@dataclass
class _Section:
    title: str
    html: str
    md: str


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _strip_tags(text: str) -> str:
    import re

    text = text.replace("<b>", "**").replace("</b>", "**")
    return re.sub(r"<[^>]+>", "", text)


def _figure(path: Path, alt: str, caption: str) -> tuple[str, str]:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    html_part = (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                 f"<figcaption>{caption}</figcaption></figure>")
    md_part = f"![{alt}]({path.name})\n\n{_strip_tags(caption)}"
    return html_part, md_part


def _loafing_section(data: dict, out: Path, colors: dict[str, str]) -> _Section:
    settings = data.get("settings", {})
    bn = int(settings.get("bn_recal_images") or 0)
    num_classes = settings.get("num_classes")
    png = plot_loafing(data["rows"], out / "loafing.png", bn_images=bn,
                       chance=100.0 / num_classes if num_classes else None, colors=colors)
    fig_html, fig_md = _figure(png, "loafing plot", CAPTIONS["loafing"])
    summaries = data.get("summary", [])
    header = ["run", "full net (%)", "mean sub-net (%)", "mean drop (pts)", "full net, BN re-est. (%)",
              "mean sub-net, BN re-est. (%)", "mean drop, BN re-est. (pts)", "smallest sub-net", "smallest, BN re-est. (%)",
              "gap vs alone (pts)"]
    rows = [[s["run"], _num(s.get("full_acc")), _num(s.get("mean_sub_acc")), _num(s.get("mean_drop")),
             _num(s.get("full_acc_bn")), _num(s.get("mean_sub_acc_bn")), _num(s.get("mean_drop_bn")),
             s.get("smallest_depths", "-"), _num(s.get("smallest_acc_bn")), _num(s.get("gap_vs_alone"))]
            for s in summaries]
    finding = _loafing_finding(summaries)
    detail_header = ["run", "kind", "depths", "blocks", "acc (%)", "acc, BN re-est. (%)"]
    detail = [[r["run"], "inside the network" if r["kind"] == "inside" else "trained alone", r["depths"],
               str(r["num_blocks"]), _num(r.get("acc")), _num(r.get("acc_bn"))] for r in data["rows"]]
    n_test = settings.get("test_images")
    note = (f"Sub-networks evaluated on {n_test} test images" if n_test else "Sub-networks evaluated on the test set")
    note += f"; BN statistics re-estimated on {bn} training images." if bn else "; no BN re-estimation."
    body_html = (f"<p>{html.escape(note)}</p>" + (f'<p class="finding">{html.escape(finding)}</p>' if finding else "")
                 + _html_table(header, rows) + fig_html
                 + f"<details><summary>All {len(detail)} rows</summary>{_html_table(detail_header, detail)}</details>")
    body_md = (note + "\n\n" + (f"**{finding}**\n\n" if finding else "") + _md_table(header, rows) + "\n\n" + fig_md
               + "\n\n" + _md_table(detail_header, detail))
    return _Section("Network loafing: sub-networks inside the trained network", body_html, body_md)


def _loafing_finding(summaries: Sequence[dict]) -> str:
    key = "mean_drop_bn" if all(s.get("mean_drop_bn") is not None for s in summaries) else "mean_drop"
    valid = [s for s in summaries if s.get(key) is not None]
    if len(valid) < 1:
        return ""
    ranked = sorted(valid, key=lambda s: s[key], reverse=True)
    how = " (BN statistics re-estimated)" if key.endswith("_bn") else ""
    parts = [f"{s['run']}: {s[key]:.1f} points" for s in ranked]
    text = f"Mean accuracy lost by the sub-networks relative to their full network{how}: " + "; ".join(parts) + "."
    if len(ranked) >= 2 and ranked[0][key] > ranked[-1][key]:
        text += f" {ranked[0]['run']} loafs the most, {ranked[-1]['run']} the least."
    return text


def _logits_section(data: dict, out: Path, colors: dict[str, str]) -> _Section:
    grouped = norms_by_blocks(data["rows"])
    png = plot_logits(data["rows"], grouped, out / "logits.png", colors=colors)
    fig_html, fig_md = _figure(png, "logit norms", CAPTIONS["logits"])
    runs = list(dict.fromkeys(g["run"] for g in grouped))
    blocks = sorted({g["num_blocks"] for g in grouped})
    lookup = {(g["run"], g["num_blocks"]): g for g in grouped}
    header = ["blocks"] + [f"{r}: mean |z| (std)" for r in runs]
    rows = [[str(b)] + [f"{lookup[(r, b)]['norm_mean']:.2f} ({lookup[(r, b)]['norm_std']:.2f})"
                        if (r, b) in lookup else "-" for r in runs] for b in blocks]
    return _Section("Logit amplitude of sub-networks", fig_html + _html_table(header, rows),
                    fig_md + "\n\n" + _md_table(header, rows))


def _erf_section(data: dict, out: Path) -> _Section:
    png = plot_erf(data["entries"], out / "erf.png")
    fig_html, fig_md = _figure(png, "effective receptive fields", CAPTIONS["erf"])
    sizes = sorted({int(e["size"]) for e in data["entries"]}, reverse=True)
    keys = list(dict.fromkeys((e["run"], e["depths"]) for e in data["entries"]))
    lookup = {(e["run"], e["depths"], int(e["size"])): e for e in data["entries"]}
    header = ["run", "depths"] + [f"r90 at {s}x{s} px" for s in sizes]
    rows = [[run, depths] + [f"{lookup[(run, depths, s)]['radius_px']:.1f} px "
                             f"({100 * lookup[(run, depths, s)]['radius_frac']:.0f}%)"
                             if (run, depths, s) in lookup else "-" for s in sizes] for run, depths in keys]
    return _Section("Effective receptive field", fig_html + _html_table(header, rows),
                    fig_md + "\n\n" + _md_table(header, rows))


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1180px; margin: 24px auto;
       padding: 0 20px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ddd;
     padding-bottom: 4px; margin-top: 1.8em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 10px 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f7; } tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
figure { margin: 14px 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #333; background: #f7f9fc; padding: 8px 10px; border-left: 3px solid #4a7bd0; }
.finding { background: #fff8e1; border-left: 3px solid #f0b400; padding: 6px 10px; }
details { margin: 8px 0; } summary { cursor: pointer; color: #355fa8; }
code { background: #f2f2f2; padding: 1px 4px; border-radius: 3px; }
"""


def write_report(runs: Sequence[RunRecord], out_dir: str | Path, analyses: dict[str, dict] | None = None,
                 title: str = "Stimulative training report") -> Path:
    """Write ``report.html`` (self-contained, images embedded as base64 PNG), ``report.md`` and the PNGs.

    Args:
        runs: the runs to compare (``read_runs``); names should be unique.
        out_dir: output folder.
        analyses: ``{"loafing"|"logits"|"erf": analysis JSON dict}`` (``find_analyses``); missing kinds are
            left out of the report.
        title: page title.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unique_names(list(runs))
    analyses = analyses or {}
    colors = run_colors([r.name for r in runs])
    sections: list[_Section] = []

    run_rows = [[r.name, str(r.path), method_label(r.config)] for r in runs]
    note = ("The analyses below use each run's best.pt (the epoch with the best full-network test accuracy), "
            "else last.pt.")
    sections.append(_Section("Runs", _html_table(["run", "path", "method"], run_rows) + f"<p>{note}</p>",
                             _md_table(["run", "path", "method"], run_rows) + "\n\n" + note))
    header, rows = final_accuracy_rows(runs)
    sections.append(_Section("Final accuracies", _html_table(header, rows), _md_table(header, rows)))
    diff = config_diff(runs)
    if len(runs) > 1:
        d_header = ["config key"] + [r.name for r in runs]
        d_rows = [[k] + [_value(v) for v in values] for k, values in diff]
        text = "Only the settings that differ between the runs are listed (all others are equal)."
        if not d_rows:
            text = "The runs have identical configurations (apart from their names)."
        sections.append(_Section("Configuration differences", f"<p>{text}</p>" + _html_table(d_header, d_rows),
                                 text + "\n\n" + _md_table(d_header, d_rows)))
    curves = plot_training_curves({r.name: r.history for r in runs}, out / "training_curves.png", colors=colors)
    if curves is not None:
        fig_html, fig_md = _figure(curves, "training curves", CAPTIONS["curves"])
        sections.append(_Section("Training curves", fig_html, fig_md))
    if "loafing" in analyses:
        sections.append(_loafing_section(analyses["loafing"], out, colors))
    if "logits" in analyses:
        sections.append(_logits_section(analyses["logits"], out, colors))
    if "erf" in analyses:
        sections.append(_erf_section(analyses["erf"], out))
    missing = [k for k in ANALYSES if k not in analyses]
    if missing:
        command = "stimulative report RUN_DIR ... --" + " --".join(missing)
        text = "Not computed: " + ", ".join(missing) + ". Add them with {} (or run the analysis commands)."
        sections.append(_Section("Missing analyses", "<p>" + text.format(f"<code>{html.escape(command)}</code>")
                                 + "</p>", text.format(f"`{command}`")))

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = ", ".join(r.name for r in runs)
    page = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
            f"<p class='meta'>Runs: {html.escape(names)} &middot; generated {stamp} by "
            "<code>stimulative report</code></p>", f"<p>{INTRO}</p>"]
    md = [f"# {title}", "", f"Runs: {names} · generated {stamp} by `stimulative report`", "", _strip_tags(INTRO), ""]
    for s in sections:
        page.append(f"<section><h2>{html.escape(s.title)}</h2>{s.html}</section>")
        md += [f"## {s.title}", "", s.md, ""]
    page.append("</body></html>")
    atomic_write_text(out / "report.md", "\n".join(md))
    return atomic_write_text(out / "report.html", "\n".join(page))
