"""Provenance: the library's git commit as git itself reports it, and the distinct commits of a run's starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import stimulative
from stimulative.provenance import commits_of, git_state, run_start


def test_git_state_is_the_checkout_of_the_imported_package():
    here = Path(stimulative.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit, dirty = git_state()
    if head.returncode != 0:  # an installed wheel: nothing to name
        assert (commit, dirty) == (None, None)
        return
    assert commit == head.stdout.strip() and len(commit) == 40
    status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                            text=True)
    assert dirty is bool(status.stdout.strip())
    start = run_start()
    assert start["git_commit"] == commit and start["stimulative"] == stimulative.__version__
    assert all(type(v) in (str, bool) for v in start.values() if v is not None)  # weights_only-safe


def test_commits_of_keeps_each_commit_once_in_order_and_marks_dirty():
    starts = [{"git_commit": "a"}, {"git_commit": "a"}, {"git_commit": "b", "git_dirty": True},
              {"git_commit": None}, {"git_commit": "a"}]
    assert commits_of(starts) == ["a", "b+dirty"]
    assert commits_of(None) == [] and commits_of([]) == []
