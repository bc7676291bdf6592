"""What a run reports: ``metrics.jsonl``/``.csv``, ``steps.jsonl``, optional TensorBoard, console lines, and the
training-curve figure (one run in ``training.png``, several overlaid in the report).

The engine appends one flat dict per epoch (numbers and ``None``); this module only writes, prints and plots
them::

    log = MetricsLog("runs/demo", tensorboard=False)
    log.write([{"epoch": 1, "train_loss": 2.1, "test_acc": 31.0}])
    plot_training_curves({"demo": log.records}, "runs/demo/training.png")

A sub-network evaluated during training is recorded as ``test_acc_d<depths>`` with the depths written
``1-1-1`` (``subnet_metric``): the key is also a CSV column, where a comma cannot stand.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._extras import require
from ..core.elastic import DepthConfig, format_depths
from ..io import read_jsonl, write_csv, write_jsonl

__all__ = ["MetricsLog", "plot_training_curves", "run_colors", "console", "format_record", "subnet_metric",
           "subnet_metric_label", "SUBNET_METRIC_PREFIX"]

SUBNET_METRIC_PREFIX = "test_acc_d"


def subnet_metric(depths: DepthConfig) -> str:
    """The metrics key of a sub-network's test accuracy: ``[1, 2, 3]`` -> ``"test_acc_d1-2-3"``."""
    return SUBNET_METRIC_PREFIX + format_depths(depths, sep="-")


def subnet_metric_label(key: str) -> str:
    """The depths of a ``subnet_metric`` key in the usual form: ``"test_acc_d1-2-3"`` -> ``"1,2,3"``."""
    return key[len(SUBNET_METRIC_PREFIX):].replace("-", ",")


class MetricsLog:
    """The metric files of one run directory (written by rank 0 only).

    ``write(records)`` rewrites ``metrics.jsonl`` and ``metrics.csv`` from the whole history, so a resumed run
    never carries duplicate or half-written lines from an interrupted one.

    Args:
        run_dir: the run directory.
        tensorboard: also log every numeric value with ``torch.utils.tensorboard`` under ``run_dir/tensorboard``.

    Example:
        >>> import tempfile
        >>> from stimulative.io import read_jsonl
        >>> log = MetricsLog(tempfile.mkdtemp())
        >>> log.write([{"epoch": 1, "test_acc": 50.0}])
        >>> read_jsonl(log.jsonl_path)[0]["test_acc"]
        50.0
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.csv_path = self.run_dir / "metrics.csv"
        self.steps_path = self.run_dir / "steps.jsonl"
        self.records: list[dict[str, Any]] = []
        self.writer = None
        if tensorboard:
            tensorboard_module = require("torch.utils.tensorboard", "tensorboard", "tensorboard=true")
            self.writer = tensorboard_module.SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Rewrite the JSONL and CSV files with ``records``; new epochs also go to TensorBoard."""
        old = len(self.records)
        self.records = [dict(r) for r in records]
        write_jsonl(self.records, self.jsonl_path)
        write_csv(self.records, self.csv_path)
        if self.writer is not None:
            for r in self.records[old:]:
                for key, value in r.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                        self.writer.add_scalar(key, value, r.get("epoch", 0))
            self.writer.flush()

    def add_step_scalars(self, step: int, values: dict[str, float]) -> None:
        """Per-step values (loss, lr) to TensorBoard, when enabled."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    def start_steps(self, keep_until: int) -> None:
        """Open ``steps.jsonl`` for appending, keeping only the records of steps <= ``keep_until``.

        A resumed run keeps what was logged before the checkpoint and drops what an interrupted run logged
        after it; a fresh run (``keep_until=0``) starts an empty file.
        """
        path = self.steps_path
        kept = [r for r in (read_jsonl(path) if path.exists() else []) if r.get("step", 0) <= keep_until]
        if kept or path.exists():
            write_jsonl(kept, path)

    def add_step_stats(self, step: int, epoch: int, main_loss: float, stats: dict[str, Any]) -> None:
        """Append one instrumented step (``StimulativeStep.last_stats``) to ``steps.jsonl``."""
        record = {"step": step, "epoch": epoch, "loss_main": main_loss,
                  **{k: v for k, v in stats.items() if k != "sizes"},
                  "sizes": [list(s) for s in stats.get("sizes", [])]}
        with open(self.steps_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self.add_step_scalars(step, {"grad_main": stats.get("grad_main", 0.0),
                                         "std_main": stats.get("std_main", 0.0)})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def console(text: str) -> None:
    """Print one line without breaking an active tqdm bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def format_record(r: dict[str, Any], epochs: int) -> str:
    """The console summary line of one epoch record."""
    parts = [f"epoch {r['epoch']}/{epochs}{' (partial)' if r.get('partial') else ''}", f"step {r['step']}",
             f"lr {r['lr']:.4g}", f"loss {r['train_loss']:.4f} (main {r['train_loss_main']:.4f} "
             f"sub {r['train_loss_subnet']:.4f})", f"train {r['train_acc']:.2f}%"]
    if r.get("test_acc") is not None:
        parts.append(f"test {r['test_acc']:.2f}%")
    parts += [f"[{k[len(SUBNET_METRIC_PREFIX):]}] {v:.2f}%" for k, v in r.items()
              if k.startswith(SUBNET_METRIC_PREFIX)]
    if r.get("ema_test_acc") is not None:
        parts.append(f"ema {r['ema_test_acc']:.2f}%")
    parts.append(f"{r['img_per_s']:.0f} img/s, {r['epoch_time_s']:.1f}s")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------------------------

def run_colors(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per run name (tab10 order), shared by every figure of a report."""
    palette = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:gray"]
    return {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(names))}


_LOSS_KEYS = {"train_loss_main": ("train: main CE", "--"),
              "train_loss_subnet": ("train: sub-network loss (sum over sub-networks)", ":"),
              "test_loss": ("test: full network CE", "-")}
_ACC_KEYS = {"test_acc": ("test: full network", "-"), "train_acc": ("train: main network", "--"),
             "ema_test_acc": ("test: EMA", "-.")}
_SUB_STYLES = [(0, (1, 1)), (0, (3, 1, 1, 1)), (0, (5, 2)), (0, (1, 2))]


def plot_training_curves(histories: dict[str, Sequence[dict]], path: str | Path, title: str | None = None,
                         colors: dict[str, str] | None = None) -> Path | None:
    """Per-epoch losses (left) and accuracies (right) of one or several runs, as a PNG.

    Args:
        histories: run name -> ``metrics.jsonl`` records (``epoch``, ``train_loss_main``, ``train_loss_subnet``,
            ``test_loss``, ``train_acc``, ``test_acc``, ``test_acc_d<depths>``, ``ema_test_acc``).
        path: PNG to write.
        title: figure title (default: says what colour and line style mean).
        colors: run -> colour (default ``run_colors``); line styles tell the metrics apart.

    Returns:
        The path, or None when no record has an epoch and a known metric.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    colors = colors or run_colors(list(histories))
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    drawn = 0
    for run, records in histories.items():
        color = colors.get(run, "tab:blue")
        sub_keys = sorted({k for r in records for k in r if k.startswith(SUBNET_METRIC_PREFIX)})
        specs = [(ax_loss, k, *_LOSS_KEYS[k]) for k in _LOSS_KEYS]
        specs += [(ax_acc, k, *_ACC_KEYS[k]) for k in _ACC_KEYS]
        specs += [(ax_acc, k, f"test: sub-network {subnet_metric_label(k)}", _SUB_STYLES[i % len(_SUB_STYLES)])
                  for i, k in enumerate(sub_keys)]
        for ax, key, label, style in specs:
            pts = [(r["epoch"], r[key]) for r in records
                   if isinstance(r.get(key), (int, float)) and isinstance(r.get("epoch"), (int, float))]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, ls=style, lw=1.6,
                    marker="o" if len(pts) <= 30 else None, ms=3, label=f"{run}: {label}")
            drawn += 1
    if not drawn:
        return None
    ax_loss.set_ylabel("loss (nats)")
    ax_loss.set_title("losses", fontsize=10)
    ax_acc.set_ylabel("top-1 accuracy (%)")
    ax_acc.set_title("accuracy (sub-networks: as evaluated during training)", fontsize=10)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Training curves (colour: run, line style: metric)", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
