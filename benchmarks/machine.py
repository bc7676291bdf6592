"""Helpers of the benchmark scripts for running jobs (imported by the benchmarks/ scripts). The record format,
its writer and the machine description are ``stimulative.io`` (``benchmark_record``, ``write_record``,
``machine_info``)."""

from __future__ import annotations

import os
import time
from pathlib import Path


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
