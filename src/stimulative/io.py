"""Writing files so that a crash never leaves half of one: atomic writes, JSON, JSON lines and CSV; and the one
record format of the benchmarks (``benchmark_record``, ``write_record``, ``read_record``).

Every writer goes through ``atomic_path``: the content is written to a temp file in the same folder and renamed
over the target (``os.replace``), so readers see the old file or the new one, never a partial one. This module
imports nothing from the package; every layer may use it.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.json"
    >>> _ = write_json({"acc": float("nan"), "depths": (1, 2)}, path)
    >>> read_json(path)
    {'acc': None, 'depths': [1, 2]}
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_torch_save", "remove_stale_temps", "writable_dir", "jsonable",
           "write_json", "read_json", "write_jsonl", "read_jsonl", "write_csv", "RECORD_FORMAT", "RECORD_FIELDS",
           "benchmark_record", "write_record", "read_record", "code_version", "machine_info"]

_TEMP_GLOB = ".*.tmp"   # the temp files of ``atomic_path``: ".<name>.<random>.tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[str]:
    """Yield a temp file name next to ``path``; on success it replaces ``path`` (on failure it is removed).

    Args:
        path: the file to (re)write; its folder is created.
        fsync: flush the temp file to disk before the rename (checkpoints: survives a power cut too).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and fsynced: a kill mid-write leaves the previous file intact."""
    import torch

    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
    return Path(path)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that interrupted atomic writes (a kill between write and rename) left in ``folder``.

    Only call it while no other process writes there (the training run holds the run directory's lock).
    """
    removed = []
    for tmp in Path(folder).glob(_TEMP_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def writable_dir(path: str | Path) -> bool:
    """Whether files may be created in directory ``path`` (or, when it does not exist yet, in the nearest existing
    folder above it, where it would be created).

    The directory must be writable for us and not marked read-only for everyone: root may write anywhere, but a
    folder with mode r-x says "don't" (a shared dataset folder, a read-only mount).
    """
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return path.is_dir() and os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def jsonable(value: Any) -> Any:
    """JSON-safe values: NaN/inf become None, tuples become lists, paths and dtypes become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path) or type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value)
    return value


def write_json(obj: Any, path: str | Path, indent: int = 1) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN/inf as null, tuples as lists, paths as strings)."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def write_jsonl(records: Sequence[dict], path: str | Path) -> Path:
    """Rewrite ``path`` atomically with one JSON object per line."""
    return atomic_write_text(path, "".join(json.dumps(jsonable(r)) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file (one object per line, blank lines ignored)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically; columns default to the union of keys in first-seen order.

    ``None`` is written as an empty cell and a list or tuple as ``a,b,c``.
    """
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return Path(path)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Benchmark records: one format for every script of benchmarks/ (and for anyone timing the library the same way).

RECORD_FORMAT = "stimulative-benchmark/1"
# every record has these keys (``None`` where one does not apply, e.g. the seed of a throughput measurement); the
# measured fields sit beside them at the top level, named by the benchmark (``test_acc``, ``epoch_s``, ...)
RECORD_FIELDS = ("format", "benchmark", "setting", "method", "seed", "wall_s", "command", "code_version",
                 "machine")
# records written before the format: where each standard field was (first present wins)
_OLD_NAMES = {"setting": ("setting_name", "setting"), "method": ("method", "variant"),
              "wall_s": ("wall_s", "train_s", "train_time_s", "total_time_s"), "command": ("command",),
              "seed": ("seed",), "machine": ("machine",)}


def code_version(where: str | Path | None = None) -> str | None:
    """The git commit of the checkout holding ``where`` (default: this package's source), ``+dirty`` when it has
    uncommitted changes; None outside a git checkout or without git."""
    import subprocess

    here = Path(where) if where is not None else Path(__file__).resolve().parent
    here = here if here.is_dir() else here.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "--no-optional-locks", "-C", str(here), *args], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_info(threads: int | None = None) -> dict:
    """Platform, library versions, CUDA device, load average at the start and the date (UTC) of this machine."""
    import datetime
    import platform

    import torch

    versions = {"torch": torch.__version__}
    for name in ("torchvision", "PIL"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        versions["pillow" if name == "PIL" else name] = getattr(module, "__version__", None)
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": threads, **versions,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def benchmark_record(benchmark: str, measured: dict[str, Any], *, command: str | None, setting: str | None = None,
                     method: str | None = None, seed: int | None = None, wall_s: float | None = None,
                     code: str | None = None, machine: dict | None = None) -> dict[str, Any]:
    """A benchmark record: the standard fields (``RECORD_FIELDS``) first, then the measured fields.

    Args:
        benchmark: the script or suite that measured it (``bench_peers``, ``bench_lm``...).
        measured: what was measured (accuracies, times, ratios, histories...), kept as given at the top level; a
            measured field named like a standard field wins over the argument (older readers read it there).
        command: the exact command that reproduces the record.
        setting, method, seed: what was run; None where one does not apply.
        wall_s: the wall time of the measurement in seconds.
        code: the code version; default the git commit of this package's checkout (``code_version()``).
        machine: the machine; default ``machine_info()`` of this process.
    """
    head = {"format": RECORD_FORMAT, "benchmark": benchmark, "setting": setting, "method": method, "seed": seed,
            "wall_s": wall_s, "command": command, "code_version": code if code is not None else code_version(),
            "machine": machine if machine is not None else machine_info()}
    return {**head, **measured}


def write_record(record: dict[str, Any], path: str | Path, indent: int = 1) -> Path:
    """Write a benchmark record atomically (a stop mid-write leaves the old file or none); refuses a dict that is
    not in the format (make it with ``benchmark_record``)."""
    missing = [k for k in RECORD_FIELDS if k not in record]
    if record.get("format") != RECORD_FORMAT or missing:
        raise ValueError(f"not a {RECORD_FORMAT} record (missing {', '.join(missing) or 'format'}): make it with "
                         "stimulative.io.benchmark_record")
    return write_json(record, path, indent=indent)


def read_record(path: str | Path, benchmark: str | None = None) -> dict[str, Any]:
    """Read a benchmark record; one written before the format gets its standard fields from the names it used
    (``setting_name``/``setting``, ``method``/``variant``, ``train_s``/``train_time_s``/``total_time_s``, the
    code version from ``trained_at``), None where it had none. The measured fields are returned unchanged."""
    record = read_json(path)
    if not isinstance(record, dict):
        raise ValueError(f"{str(path)!r} is not a benchmark record (not a JSON object)")
    if record.get("format") == RECORD_FORMAT:
        return record
    head: dict[str, Any] = {"format": RECORD_FORMAT, "benchmark": benchmark}
    for key, names in _OLD_NAMES.items():
        head[key] = next((record[n] for n in names if record.get(n) is not None), None)
    trained_at = record.get("trained_at")
    head["code_version"] = record.get("code_version") or (trained_at[-1] if trained_at else None)
    return {**head, **record}
