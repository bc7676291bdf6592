"""Loafing by depth for trained LM runs: every prefix depth inside each model next to depth-k models trained alone.

``lm_loafing({"CT": "runs/lm_ct", "ST": "runs/lm_st"}, alone=["runs/lm_d4"], out_dir="runs/lm_loafing")``
evaluates the validation next-token loss (nats/token) and perplexity of the first k layers (+ final norm and LM
head) of every run for k = 1..L (``depth_losses``), and the full loss of every run trained alone (a run of the
same recipe with ``model.num_hidden_layers=k``), all on the same validation blocks. It writes
``loafing_lm.json`` (rows, settings), ``loafing_lm.csv`` and ``loafing_lm.png`` (loss vs depth, one line per run,
the models trained alone as black squares: the LM version of the paper's loafing figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import write_csv, write_json
from .config import LMConfig
from .data import load_lm_data
from .evaluate import depth_losses
from .model import load_lm

__all__ = ["lm_loafing", "lm_method", "plot_loafing_lm"]


def lm_method(cfg: LMConfig) -> str:
    """``CT`` (no sub-networks), ``ST`` (plain KL) or ``ST++`` (KL- : a normalised KL)."""
    if cfg.st.num_subnets == 0:
        return "CT"
    return "ST" if cfg.st.kl_norm == "plain" else "ST++"


def _data_key(cfg: LMConfig) -> tuple:
    d = cfg.data
    return (d.root or "stdlib", d.val_fraction, d.tokenizer, d.max_bytes, cfg.model.context)


def _labelled(runs: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, Path]:
    if isinstance(runs, Mapping):
        return {str(k): Path(v) for k, v in runs.items()}
    return {Path(p).name: Path(p) for p in runs}


def lm_loafing(runs: Mapping[str, str | Path] | Sequence[str | Path], alone: Sequence[str | Path] = (),
               out_dir: str | Path | None = None, depths: Sequence[int] | None = None, val_blocks: int | None = None,
               batch_size: int | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Validation loss of every depth inside each run, and of the runs trained alone; writes the table and figure.

    Args:
        runs: label -> run directory (or a list of run directories, labelled by their folder name).
        alone: run directories of the same recipe with fewer layers (matched to depth k by their layer count).
        out_dir: where ``loafing_lm.{json,csv,png}`` go (None: nothing is written).
        depths: prefix depths to evaluate (default 1..L of each run).
        val_blocks / batch_size: validation blocks and batch size (default: the first run's ``data.val_blocks``
            and ``eval_batch_size``).

    Returns:
        ``{"rows": [...], "alone": {k: row}, "settings": {...}}``; a row holds ``run``, ``method``, ``depth``,
        ``layers``, ``loss``, ``ppl``, ``tokens`` and, where a model of that depth was trained alone,
        ``alone_loss`` and ``rel_to_alone`` (loss / alone_loss - 1).
    """
    runs = _labelled(runs)
    if not runs:
        raise ValueError("lm_loafing needs at least one run")
    loaded = {name: load_lm(path, device) for name, path in runs.items()}
    alone_loaded = [load_lm(p, device) for p in alone]
    for lm in [*loaded.values(), *alone_loaded]:
        if lm.exit_adapter is not None:  # its model is model.pretrained's, untouched: its depths are not what it trained
            raise ValueError(f"{lm.path} is an exit-adapter run: its model is model.pretrained, frozen, and only "
                             f"the exit on layer {lm.exit_adapter.layer} is trained (its val_loss_d"
                             f"{lm.exit_adapter.layer} in metrics.jsonl); loafing compares runs that train the model")
    first = next(iter(loaded.values())).config
    for name, lm in [*loaded.items(), *((str(a.path), a) for a in alone_loaded)]:
        if _data_key(lm.config) != _data_key(first):
            raise ValueError(f"run {name} was trained on other data or context ({_data_key(lm.config)}) than "
                             f"{next(iter(loaded))} ({_data_key(first)}); loafing compares runs on one val set")
    blocks = first.data.val_blocks if val_blocks is None else val_blocks
    batches = load_lm_data(first, train=False).val_batches(blocks, batch_size or first.eval_batch_size)

    from ..hf import elastic_depth

    alone_rows: dict[int, dict[str, Any]] = {}
    for lm in alone_loaded:
        ed = elastic_depth(lm.model)
        k = ed.full_depths[0]
        res = depth_losses(ed, batches, [k], device=device)[k]
        alone_rows[k] = {"run": lm.config.name, "path": str(lm.path), "method": lm_method(lm.config), "depth": k,
                         "layers": k, "alone": True, "loss": res["loss"], "ppl": res["ppl"], "tokens": res["tokens"],
                         "step": lm.checkpoint.get("step")}
        ed.remove()
    rows = []
    for name, lm in loaded.items():
        ed = elastic_depth(lm.model)
        layers = ed.full_depths[0]
        wanted = list(range(1, layers + 1)) if depths is None else [int(k) for k in depths if 1 <= int(k) <= layers]
        for k, res in depth_losses(ed, batches, wanted, device=device).items():
            row = {"run": name, "path": str(lm.path), "method": lm_method(lm.config), "depth": k, "layers": layers,
                   "alone": False, "loss": res["loss"], "ppl": res["ppl"], "tokens": res["tokens"],
                   "step": lm.checkpoint.get("step")}
            if k in alone_rows:
                row["alone_loss"] = alone_rows[k]["loss"]
                row["rel_to_alone"] = res["loss"] / alone_rows[k]["loss"] - 1
            rows.append(row)
        ed.remove()
    result = {"rows": rows, "alone": alone_rows,
              "settings": {"val_blocks": len(torch.cat(batches)), "context": first.model.context,
                           "data": first.data.root or "stdlib", "tokenizer": first.data.tokenizer,
                           "tokens": rows[0]["tokens"] if rows else None}}
    if out_dir is not None:
        out = Path(out_dir)
        write_json(result, out / "loafing_lm.json")
        write_csv(rows + list(alone_rows.values()), out / "loafing_lm.csv",
                  ["run", "method", "depth", "layers", "alone", "loss", "ppl", "tokens", "alone_loss", "rel_to_alone",
                   "step", "path"])
        plot_loafing_lm(result, out / "loafing_lm.png")
    return result


def plot_loafing_lm(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Validation loss vs depth: one line per run (prefix depths inside it), black squares for models trained
    alone; the y axis is the loss in nats/token."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    preferred = {"CT": "tab:blue", "ST": "tab:red", "ST++": "tab:green"}
    spare = ["tab:purple", "tab:orange", "tab:brown", "tab:cyan", "tab:olive", "tab:pink", "tab:gray"]
    used: set[str] = set()
    for name in dict.fromkeys(r["run"] for r in result["rows"]):
        pts = sorted((r["depth"], r["loss"], r["method"]) for r in result["rows"] if r["run"] == name)
        color = preferred.get(pts[0][2])
        if color is None or color in used:  # a second run of the same method gets its own colour
            color = next(c for c in spare if c not in used)
        used.add(color)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1.6, color=color,
                label=f"{name}: depth k inside the model")
    alone = sorted(result["alone"].values(), key=lambda r: r["depth"]) if isinstance(result["alone"], dict) else []
    if alone:
        ax.plot([r["depth"] for r in alone], [r["loss"] for r in alone], ls="none", marker="s", ms=7,
                color="black", label="depth k trained alone")
    ax.set_xlabel("depth k (first k layers + final norm + LM head)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Loafing by depth: validation loss of the prefix sub-networks", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
