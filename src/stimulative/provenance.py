"""What code trained a run: the versions and, for a git checkout, the commit of the library at each start.

A training checkpoint keeps one ``run_start()`` record per start of its run (the fresh start, then each
resume) under ``"starts"``, so that a run resumed after the library changed says so, and a benchmark record
can name the commit its numbers come from. The commit is the one of the git checkout this package is imported
from (an editable install): the package's own files must be tracked there, so a wheel installed inside some
other repository (a ``.venv`` in a project) has none (``git_commit: None``). This module imports only the
package's ``_version``; every layer may use it.

Example:
    >>> from stimulative.provenance import run_start
    >>> sorted(run_start())
    ['git_commit', 'git_dirty', 'python', 'started', 'stimulative', 'torch']
"""

from __future__ import annotations

import datetime
import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ._version import __version__

__all__ = ["git_state", "run_start", "commits_of"]


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout this package's source is tracked in; ``(None, None)`` for a copy
    git does not track (an installed wheel, even inside another repository) or without git. ``dirty``: the
    package's own files differ from the commit."""
    return _git_state(Path(__file__).resolve().parent)


def _git_state(here: Path) -> tuple[str | None, bool | None]:
    def git(*args: str) -> subprocess.CompletedProcess:
        # --no-optional-locks: reading the status must never take index.lock from a commit made meanwhile
        return subprocess.run(["git", "--no-optional-locks", "-C", str(here), *args], capture_output=True,
                              text=True, timeout=10)

    try:
        if git("ls-files", "--error-unmatch", "--", "__init__.py").returncode != 0:
            return None, None  # not tracked here: this is not the checkout the code came from
        commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None, None
    if commit.returncode != 0:
        return None, None
    return commit.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None


def run_start() -> dict[str, Any]:
    """One start of a training run: the UTC time, the versions of stimulative, torch and python, and the
    library's git commit (``git_dirty``: uncommitted changes to the library's files). Plain strings and bools
    only: a checkpoint holding it still loads with ``torch.load(weights_only=True)``."""
    commit, dirty = git_state()
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "stimulative": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "git_commit": commit, "git_dirty": dirty}


def commits_of(starts: list[dict[str, Any]] | None) -> list[str]:
    """The distinct library commits of a run's starts, in order (``+dirty`` marks uncommitted changes,
    ``unknown`` a start outside a git checkout); empty for a checkpoint written before starts were recorded."""
    out: list[str] = []
    for s in starts or []:
        name = s["git_commit"] + ("+dirty" if s.get("git_dirty") else "") if s.get("git_commit") else "unknown"
        if name not in out:
            out.append(name)
    return out
