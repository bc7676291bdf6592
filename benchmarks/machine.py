"""What every benchmark records about the machine it ran on, and how it writes a record (imported by the
benchmarks/ scripts)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

import PIL
import torch
import torchvision


def write_json(obj: dict, path: Path, indent: int = 1) -> None:
    """Write a record atomically (a stop mid-write leaves the old file or none, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + "\n")
    os.replace(tmp, path)


def reap(running: dict[str, tuple]) -> list[tuple[str, tuple]]:
    """Take the finished jobs out of ``running`` (``{name: (process, ..., log path)}``: the ``subprocess.Popen``
    first, its log last); print the end of the log of each that failed; return ``(name, entry)`` of those that
    succeeded, for the caller to record."""
    done = []
    for name, entry in list(running.items()):
        proc, log = entry[0], entry[-1]
        if proc.poll() is None:
            continue
        del running[name]
        if proc.returncode:
            tail = "\n".join(Path(log).read_text().splitlines()[-8:])
            print(f"[{time.strftime('%H:%M:%S')}] FAILED {name} (exit {proc.returncode}):\n{tail}", flush=True)
        else:
            done.append((name, entry))
    return done


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def trained_at(checkpoint: Path | str) -> list[str]:
    """The library commits a run was trained at (``+dirty``: with uncommitted changes), from its checkpoint's
    ``starts``; empty when it was written before starts were recorded or outside a git checkout."""
    from stimulative.provenance import commits_of
    from stimulative.train.checkpoint import peek_checkpoint

    saved = peek_checkpoint(checkpoint)
    return commits_of(saved.starts) if saved is not None else []


def machine_info(threads: int | None = None) -> dict:
    """Platform, library versions, CUDA device, load average at the start and the date (UTC)."""
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": threads,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
