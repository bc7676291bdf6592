"""Writing files so that a crash never leaves half of one: atomic writes, JSON, JSON lines and CSV.

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
           "write_json", "read_json", "write_jsonl", "read_jsonl", "write_csv"]

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
