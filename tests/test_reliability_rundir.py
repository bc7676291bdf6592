"""Issue 14, run directories: one writer at a time (lock with pid and host, stale lock taken over), a fresh run
never mixes with the checkpoints of another one (refused unless overwrite=true, which removes them first), and
a read-only out_dir is one clear error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from test_cli_train import tiny
from test_engine import tiny_config
from test_reliability_resume import snapshot

import stimulative.train.engine as engine
from stimulative.cli import main
from stimulative.train.checkpoint import load_checkpoint
from stimulative.train.config import ConfigError
from stimulative.train.rundir import RunDirError, RunLock


def test_a_second_writer_is_refused_until_the_first_releases(tmp_path):
    run_dir = tmp_path / "r"
    held = RunLock(run_dir).acquire()
    try:
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {os.getpid()} on host "):
            engine.train(tiny_config(tmp_path, "r", "epochs=1"))
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    finally:
        held.release()
    engine.train(tiny_config(tmp_path, "r", "epochs=1"))
    assert (run_dir / "last.pt").is_file() and not (run_dir / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "time": 0}))
    engine.train(tiny_config(tmp_path, "r", "epochs=1"))
    assert f"took over the stale lock of pid {pid}" in capsys.readouterr().out
    assert not (tmp_path / "r" / ".lock").exists()


def test_fresh_run_into_a_run_dir_with_checkpoints_is_refused_unless_overwrite(tmp_path):
    run_dir = tmp_path / "r"
    engine.train(tiny_config(tmp_path, "r", "epochs=1", "seed=1"))
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "loafing.csv").write_text("old run's table\n")
    before = snapshot(run_dir)
    with pytest.raises(RunDirError, match="already holds a run.*resume=auto.*overwrite=true"):
        engine.train(tiny_config(tmp_path, "r", "epochs=1", "seed=2"))
    assert snapshot(run_dir) == before
    engine.train(tiny_config(tmp_path, "r", "epochs=1", "seed=2", "overwrite=true"))
    assert not (run_dir / "analysis").exists()
    assert load_checkpoint(run_dir)["config"]["seed"] == load_checkpoint(run_dir / "best.pt")["config"]["seed"] == 2
    with pytest.raises(ConfigError, match="overwrite=true .* resume='auto'"):
        tiny_config(tmp_path, "r", "overwrite=true", "resume=auto")


@pytest.mark.parametrize("kind", ["read-only folder", "a file"])
def test_unwritable_out_dir_is_one_clear_error(tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        out.chmod(0o555)   # read-only for everyone: refused even for root
    try:
        code = main(["train", *tiny(out / "runs" if kind == "a file" else out), "epochs=1"])
    finally:
        if out.is_dir():
            out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "error: cannot write the run directory" in err and str(out) in err
    assert out.is_file() or not list(out.iterdir())
