"""Under torchrun an error is printed once, by the rank that raised it, even when that rank is not rank 0.

The unit tests simulate a rank with the environment torchrun sets (RANK, WORLD_SIZE and, for the job's store,
TORCHELASTIC_USE_AGENT_STORE / MASTER_ADDR / MASTER_PORT with an in-process ``TCPStore``); the last test runs
2 gloo processes under torchrun.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
import torch.distributed as dist

from stimulative.cli import main
from stimulative.train.runtime import RankZeroError

for_torchrun = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")


@pytest.fixture
def failing_eval(monkeypatch):
    """``stimulative eval`` raising the error set in the returned dict."""
    import stimulative.commands.eval as eval_command

    box: dict[str, BaseException] = {}

    def run(args):
        raise box["error"]

    monkeypatch.setattr(eval_command, "run", run)
    for key in ("TORCHELASTIC_USE_AGENT_STORE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return box


def as_rank(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_an_error_of_rank_1_alone_is_printed_with_its_rank(monkeypatch, capsys, failing_eval):
    as_rank(monkeypatch, 1)
    failing_eval["error"] = ValueError("cannot read image /data/train/cat/7.jpg\n(truncated)")
    assert main(["eval", "x.pt"]) == 2
    assert capsys.readouterr().err.strip() == \
        "stimulative eval: error: [rank 1] cannot read image /data/train/cat/7.jpg (truncated)"


def test_rank_zeros_error_is_left_to_rank_0(monkeypatch, capsys, failing_eval):
    as_rank(monkeypatch, 1)
    failing_eval["error"] = RankZeroError("the run directory is locked")
    assert main(["eval", "x.pt"]) == 2
    assert capsys.readouterr().err == ""
    as_rank(monkeypatch, 0)
    failing_eval["error"] = ValueError("the run directory is locked")
    assert main(["eval", "x.pt"]) == 2
    assert capsys.readouterr().err.strip() == "stimulative eval: error: [rank 0] the run directory is locked"


def test_an_error_every_rank_raises_is_printed_once(monkeypatch, capsys, failing_eval):
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    failing_eval["error"] = ValueError("dataset path '/data' does not exist")
    lines = []
    for rank in (1, 0, 3, 2):
        as_rank(monkeypatch, rank, world=4)
        assert main(["eval", "x.pt"]) == 2
        lines += capsys.readouterr().err.splitlines()
    assert lines == ["stimulative eval: error: [rank 1] dataset path '/data' does not exist"]
    failing_eval["error"] = ValueError("another error")
    assert main(["eval", "x.pt"]) == 2
    assert capsys.readouterr().err.strip() == "stimulative eval: error: [rank 2] another error"


def test_without_torchrun_the_line_is_unchanged(monkeypatch, capsys, failing_eval):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    failing_eval["error"] = ValueError("bad depth")
    assert main(["eval", "x.pt"]) == 2
    assert capsys.readouterr().err.strip() == "stimulative eval: error: bad depth"


SCRIPT = textwrap.dedent("""
    import os, sys
    import stimulative.commands.eval as eval_command
    from stimulative.cli import main

    def run(args):
        if os.environ["RANK"] == "1":
            raise ValueError("only rank 1 fails")
        raise ValueError("every rank fails")

    eval_command.run = run
    sys.exit(main(["eval", "x.pt"]))
""")


@for_torchrun
def test_under_torchrun(tmp_path):
    """2 processes under torchrun: rank 1's own error is printed, once, with its rank (checked by hand: with 3
    processes raising the same error, the agent's store lets exactly one of them print it)."""
    script = tmp_path / "fail.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert proc.stderr.count("stimulative eval: error: [rank 1] only rank 1 fails") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("stimulative eval: error: [rank 0] every rank fails") <= 1  # torchrun may stop it first
