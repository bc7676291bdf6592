"""The run directory: one writer at a time, never two runs mixed in it, a clear error when it cannot be written.

``open_run_dir(cfg, device)`` is what rank 0 does before a run writes anything:

1. ``out_dir/name`` must be writable (a folder marked read-only is refused even for root): ``RunDirError``.
2. ``RunLock``: ``run_dir/.lock`` holds the writer's pid and host under an ``fcntl.flock`` that the kernel drops
   when the process dies, so a lock left by a killed run is stale and taken over, and a live writer (another
   process, or another host on a shared filesystem) is refused with its pid and host. Released on exit.
3. Resuming: the checkpoint's config is compared with the new one, and the fingerprint of its training data with
   the data at ``data.root`` (``train.resume``); a refusal releases the lock and leaves the directory as it was.
4. A fresh run into a directory that holds checkpoints is refused unless ``overwrite=true``, which first removes
   the old run's files (``RUN_FILES``, ``RUN_FOLDERS``): ``eval`` never reads another run's checkpoint.
5. Temp files of interrupted atomic writes are removed, and a ``best.pt`` that a kill left behind ``last.pt``
   is rewritten from ``last.pt``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import data_fingerprint
from ..io import remove_stale_temps, writable_dir
from .checkpoint import CheckpointError, load_checkpoint, peek_checkpoint, resume_path, save_checkpoint
from .resume import IMAGE_RESUME, ResumePolicy, check_same_data, resume_changes
from .state import SavedRun

try:
    import fcntl
except ImportError:  # Windows: the pid in the lock file decides
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDirError", "RunLock", "RunStart", "open_run_dir", "RUN_FILES", "RUN_FOLDERS", "LOCK_NAME"]

LOCK_NAME = ".lock"
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "metrics.csv", "steps.jsonl", "training.png",
             "exit_adapter.pt")  # exit_adapter.pt: an exit-adapter LM run's adapter
RUN_FOLDERS = ("tensorboard", "analysis", "hf_config")  # hf_config: a language-model run's copy of its model config


class RunDirError(ValueError):
    """The run directory cannot be used: read-only, in use by another run, or holding another run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory (``run_dir/.lock``: pid, host, start time of the writer).

    Example:
        >>> import tempfile
        >>> lock = RunLock(tempfile.mkdtemp()).acquire()
        >>> lock.release()
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created_dir = False
        self.stale: dict[str, Any] | None = None   # the dead owner whose lock was taken over

    def _owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, owner: dict[str, Any]) -> RunDirError:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner["time"])) if "time" in owner else "?"
        return RunDirError(f"run directory {str(self.run_dir)!r} is in use by another run (pid {owner.get('pid', '?')}"
                           f" on host {owner.get('host', '?')}, since {since}); wait for it to finish or train "
                           "under another name")

    def acquire(self) -> RunLock:
        """Take the lock (creating the run directory); ``RunDirError`` when a live run holds it."""
        if not self.run_dir.is_dir():
            self.run_dir.mkdir(parents=True)
            self.created_dir = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            owner = self._owner()
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise self._refuse(owner) from None
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the previous owner removed the file between our open and flock: try again
                    os.close(fd)
                    continue
            elif owner.get("pid") not in (None, os.getpid()) and owner.get("host") == socket.gethostname() \
                    and _pid_alive(int(owner["pid"])):
                os.close(fd)
                raise self._refuse(owner)
            break
        self.fd = fd
        self.stale = owner or None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (and the run directory when this lock created it empty)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        if self.created_dir:
            try:
                self.run_dir.rmdir()   # only when empty: a run that stopped before writing anything
            except OSError:
                pass


@dataclass
class RunStart:
    """What ``open_run_dir`` found: the lock, the checkpoint to resume (and its dict), the applied changes and
    one console line per notable thing done (stale lock taken over, old run removed, best.pt repaired)."""

    lock: RunLock
    source: Path | None = None
    checkpoint: dict[str, Any] | None = None
    applied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None   # the training data's, as checked


def _check_writable(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} exists and is not a directory; set out_dir or name")
    if not writable_dir(run_dir):
        raise RunDirError(f"cannot write the run directory {str(run_dir)!r}: its folder is read-only or not "
                          "ours; set out_dir to a writable folder")


def _old_run(run_dir: Path) -> str | None:
    """A description of the run whose checkpoints ``run_dir`` holds, or None."""
    for name in ("last.pt", "best.pt"):
        path = run_dir / name
        if path.is_file():
            saved = peek_checkpoint(path)
            where = f", epoch {saved.epoch}" if saved is not None and saved.epoch is not None else ""
            return f"{name}{where}"
    return None


def _clear(run_dir: Path) -> list[str]:
    removed = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
            removed.append(name + "/")
    return removed


def _repair_best(run_dir: Path, source: Path, ckpt: dict[str, Any], saved: SavedRun) -> bool:
    """``last.pt`` is the best epoch but ``best.pt`` is not (a kill between the two writes): rewrite it."""
    if not saved.is_best or source.resolve() != (run_dir / "last.pt").resolve():
        return False
    best = peek_checkpoint(run_dir / "best.pt") if (run_dir / "best.pt").is_file() else None
    if best is not None and best.position == saved.position:
        return False
    save_checkpoint(ckpt, run_dir / "best.pt")
    return True


def open_run_dir(cfg: Any, device: torch.device | str = "cpu", policy: ResumePolicy = IMAGE_RESUME,
                 fingerprint: Callable[[], dict[str, Any] | None] | None = None) -> RunStart:
    """Rank 0, before anything is written: check, lock and prepare ``cfg.run_dir`` (see the module docstring).

    Args:
        cfg: the run's config: an image run's ``Config``, or a language-model run's ``LMConfig`` (any config with
            ``run_dir``, ``resume``, ``overwrite`` and ``data.root``).
        device: where the checkpoint to resume is loaded.
        policy: what a resume may change (``train.resume``; default: an image run's).
        fingerprint: the training data's fingerprint now (default: ``data_fingerprint`` of ``cfg.data``);
            called once, under the lock.

    Raises:
        RunDirError: read-only, in use, or holding another run (without ``overwrite=true``).
        ConfigError: a resume with a config the checkpoint cannot continue (``train.resume``).
        CheckpointError: the checkpoint to resume is unreadable.
    """
    run_dir = cfg.run_dir
    _check_writable(run_dir)
    source = resume_path(cfg)
    try:
        lock = RunLock(run_dir).acquire()
    except OSError as err:
        raise RunDirError(f"cannot write the run directory {str(run_dir)!r}: {err.strerror or err}; set out_dir to "
                          "a writable folder") from None
    start = RunStart(lock, source)
    try:
        if lock.stale and lock.stale.get("pid") is not None:
            start.notes.append(f"took over the stale lock of pid {lock.stale['pid']} on {lock.stale.get('host', '?')}"
                               " (a run that was killed)")
        if source is not None:
            start.checkpoint = load_checkpoint(source, map_location=device)
            saved = SavedRun.of(start.checkpoint)
            if saved.config is None or not saved.resumable:
                raise CheckpointError(f"cannot resume {str(source)!r}: it is not a training checkpoint (an exported "
                                      "network?); resume from a run's last.pt")
            start.applied = resume_changes(saved.config, cfg, int(getattr(saved, policy.completed) or 0),
                                           repr(str(source)), policy)
        # the training data's fingerprint, read afresh: a resume compares it, every checkpoint of the run records it
        current = fingerprint() if fingerprint is not None else \
            data_fingerprint(cfg.data.name, cfg.data.root, refresh=True)
        start.fingerprint = current
        if source is not None:
            check_same_data(saved.data_fingerprint, current, (saved.config.get("data") or {}).get("root"),
                            cfg.data.root, repr(str(source)))
        old = _old_run(run_dir)
        if old is not None and (source is None or source.resolve().parent != run_dir.resolve()):
            if not cfg.overwrite:
                raise RunDirError(f"{str(run_dir)!r} already holds a run ({old}); pass resume=auto to continue it, "
                                  "overwrite=true to replace it, or train under another name")
            start.notes.append(f"overwrite=true: removed the previous run's {', '.join(_clear(run_dir))}")
        remove_stale_temps(run_dir)
        if source is not None and _repair_best(run_dir, source, start.checkpoint, saved):
            start.notes.append("best.pt was behind last.pt (an interrupted write): rewrote it from last.pt")
    except BaseException:
        lock.release()
        raise
    return start
