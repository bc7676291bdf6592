"""Per-epoch training records: ``metrics.jsonl``, ``metrics.csv``, optional TensorBoard, and ``training.png``.

The engine appends one flat dict per epoch (numbers and ``None``); this module only writes and plots them::

    log = MetricsLog("runs/demo", tensorboard=False)
    log.write([{"epoch": 1, "train_loss": 2.1, "test_acc": 31.0}])
    plot_training(log.records, "runs/demo/training.png")
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_training", "read_metrics"]


class MetricsLog:
    """The metric files of one run directory (written by rank 0 only).

    ``write(records)`` rewrites ``metrics.jsonl`` and ``metrics.csv`` from the whole history, so a resumed run
    never carries duplicate or half-written lines from an interrupted one.

    Args:
        run_dir: the run directory.
        tensorboard: also log every numeric value with ``torch.utils.tensorboard`` under ``run_dir/tensorboard``.

    Example:
        >>> import tempfile
        >>> log = MetricsLog(tempfile.mkdtemp())
        >>> log.write([{"epoch": 1, "test_acc": 50.0}])
        >>> read_metrics(log.jsonl_path)[0]["test_acc"]
        50.0
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.csv_path = self.run_dir / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Rewrite the JSONL and CSV files with ``records``; new epochs also go to TensorBoard."""
        old = len(self.records)
        self.records = [dict(r) for r in records]
        _atomic_write(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.records))
        columns: list[str] = []
        for r in self.records:
            columns += [k for k in r if k not in columns]
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for r in self.records:
                w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
        tmp.replace(self.csv_path)
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
        path = self.run_dir / "steps.jsonl"
        kept = [r for r in (read_metrics(path) if path.exists() else []) if r.get("step", 0) <= keep_until]
        if kept or path.exists():
            _atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.steps_path = path

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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (one JSON object per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def plot_training(records: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Loss and accuracy curves per epoch (train and test, full network, eval sub-networks, EMA) as a PNG.

    Args:
        records: per-epoch dicts with ``epoch`` and any of ``train_loss_main``, ``train_loss_subnet``,
            ``test_loss``, ``train_acc``, ``test_acc``, ``test_acc_d<depths>``, ``ema_test_acc``.
        path: where to save the PNG.
        title: figure title (e.g. the run name).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)

    def series(key: str) -> tuple[list, list]:
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("train_loss_main", "train: main CE"),
                       ("train_loss_subnet", "train: sub-network loss (sum over sub-networks)"),
                       ("test_loss", "test: full network CE")):
        xs, ys = series(key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", ms=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (nats)")
    ax_loss.set_title("losses")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    keys = ["train_acc", "test_acc", "ema_test_acc"]
    keys += sorted({k for r in records for k in r if k.startswith("test_acc_d")})
    labels = {"train_acc": "train (main network)", "test_acc": "test: full network", "ema_test_acc": "test: EMA"}
    for key in keys:
        xs, ys = series(key)
        if xs:
            label = labels.get(key) or f"test: sub-network {key[len('test_acc_d'):].replace('-', ',')}"
            ax_acc.plot(xs, ys, marker="o", ms=3, label=label, ls="--" if key == "train_acc" else "-")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
