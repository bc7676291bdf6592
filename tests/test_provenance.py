"""Provenance: the library's git commit as git itself reports it, and the distinct commits of a run's starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import stimulative
from stimulative.provenance import _git_state, commits_of, git_state, run_start


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
    assert commits_of(starts) == ["a", "b+dirty", "unknown"]  # a start outside a checkout is not hidden
    assert commits_of(None) == [] and commits_of([]) == []


def test_only_a_checkout_that_tracks_the_package_names_a_commit(tmp_path):
    """A copy git does not track (a wheel in a project's ignored .venv) names no commit, not the project's."""
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path), *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    for folder in ("src/pkg", ".venv/site-packages/pkg"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert _git_state(tmp_path / "src" / "pkg") == (head, False)
    assert _git_state(tmp_path / ".venv" / "site-packages" / "pkg") == (None, None)  # ignored: a wheel
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("x = 2\n")
    assert _git_state(tmp_path / "src" / "pkg") == (head, True)
    outside = tmp_path.parent / f"{tmp_path.name}_plain"
    outside.mkdir()
    (outside / "__init__.py").write_text("")
    assert _git_state(outside) == (None, None)
