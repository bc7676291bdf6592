"""Issue 14, resume: a changed lr / weight decay is applied, any other changed key is refused before the run
directory is touched, extending a one-cycle run rebuilds its schedule, best.pt and last.pt stay a consistent pair,
stale temp files are removed, and a run killed with SIGKILL (while a second writer is refused) resumes to the
uninterrupted run's weights."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_cli_train import tiny
from test_data import make_folder
from test_engine import STEPS_PER_EPOCH, assert_same_state, tiny_config

import stimulative
import stimulative.train.engine as engine
from stimulative.io import read_jsonl
from stimulative.provenance import git_state
from stimulative.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    peek_checkpoint,
    run_checkpoint,
    save_checkpoint,
)
from stimulative.train.config import ConfigError, load_config
from stimulative.train.model import build_model
from stimulative.train.optim import build_optimizer, build_scheduler
from stimulative.train.rundir import RunDirError
from stimulative.train.state import SavedRun, exported_checkpoint

CONSTANT = ["optim.schedule=constant", "epochs=2"]


def snapshot(run_dir) -> dict:
    """Every file of a run directory with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A run stopped after its first epoch (max_steps), constant LR 0.05, weight decay 5e-4."""
    out = tmp_path_factory.mktemp("runs")
    engine.train(tiny_config(out, "half", *CONSTANT, f"max_steps={STEPS_PER_EPOCH}"))
    return out


def test_resume_applies_a_new_lr_and_weight_decay_and_says_so(tmp_path, one_epoch, capsys):
    shutil.copytree(one_epoch / "half", tmp_path / "half")
    engine.train(tiny_config(tmp_path, "half", *CONSTANT, "resume=auto", "optim.lr=0.01", "optim.weight_decay=0.001"))
    out = capsys.readouterr().out
    assert "optim.lr: 0.05 -> 0.01" in out and "optim.weight_decay: 0.0005 -> 0.001" in out
    ckpt = load_checkpoint(tmp_path / "half" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert {g["lr"] for g in groups} == {0.01}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.001}      # BN/bias group keeps no decay
    assert [r["lr"] for r in read_jsonl(tmp_path / "half" / "metrics.jsonl")] == [0.05, 0.01]
    # provenance: one record per start (the fresh start, then this resume), with the library's commit
    starts = SavedRun.of(ckpt).starts
    assert len(starts) == 2 and starts[0]["started"] <= starts[1]["started"]
    assert {s["git_commit"] for s in starts} == {git_state()[0]} and starts[1]["stimulative"] == stimulative.__version__


@pytest.mark.parametrize("change, key", [
    ("batch_size=64", "batch_size"),
    ("model.name=cifar_resnet20", "model.name"),
    ("optim.name=adamw", "optim.name"),
    ("st.num_subnets=2", "st.num_subnets"),
    ("seed=3", "seed"),
])
def test_resume_refuses_a_changed_key_before_touching_the_run_dir(one_epoch, change, key):
    run_dir = one_epoch / "half"
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=rf"{key}: .* -> "):
        engine.train(tiny_config(one_epoch, "half", *CONSTANT, "resume=auto", change))
    assert snapshot(run_dir) == before and not (run_dir / ".lock").exists()


def test_resume_refuses_fewer_epochs_than_completed(tmp_path):
    engine.train(tiny_config(tmp_path, "done", *CONSTANT))
    before = snapshot(tmp_path / "done")
    with pytest.raises(ConfigError, match="epochs: 2 -> 1.*completed 2 epochs"):
        engine.train(tiny_config(tmp_path, "done", "optim.schedule=constant", "epochs=1", "resume=auto"))
    assert snapshot(tmp_path / "done") == before


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_extending_epochs_rebuilds_the_schedule_for_the_new_length(tmp_path, schedule):
    """2 epochs, then epochs=3: from step 8 on the LR is the 3-epoch schedule's (not torch's "Tried to step")."""
    engine.train(tiny_config(tmp_path, "r", f"optim.schedule={schedule}", "epochs=2", "optim.warmup_epochs=1"))
    longer = tiny_config(tmp_path, "r", f"optim.schedule={schedule}", "epochs=3", "optim.warmup_epochs=1",
                         "resume=auto")
    engine.train(dataclasses.replace(longer, max_steps=2 * STEPS_PER_EPOCH + 1))
    optimizer = build_optimizer(build_model(longer, 10), longer)
    scheduler = build_scheduler(optimizer, longer, STEPS_PER_EPOCH)
    for _ in range(2 * STEPS_PER_EPOCH + 1):
        optimizer.step()
        scheduler.step()
    saved = load_checkpoint(tmp_path / "r" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in saved] == [g["lr"] for g in optimizer.param_groups]
    engine.train(longer)
    assert [r["step"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [4, 8, 12]
    assert "epochs: 3" in (tmp_path / "r" / "config.yaml").read_text()


def test_kill_between_last_and_best_is_detected_and_repaired(tmp_path, monkeypatch):
    """Each epoch is the best so far; the run dies writing epoch 2's best.pt. The run directory then stands for
    last.pt (epoch 2), not for the stale best.pt (epoch 1); resuming rewrites best.pt and removes temp files."""
    monkeypatch.setattr(engine, "evaluate_epoch", lambda *a, **k: {"test_acc": float(time.monotonic())})
    real_save = engine.save_checkpoint
    saves = []

    def dies_writing_second_best(ckpt, path):
        saves.append(path.name)
        if saves.count("best.pt") == 2:
            raise KeyboardInterrupt   # stands for SIGKILL: the atomic write never replaced best.pt
        return real_save(ckpt, path)

    monkeypatch.setattr(engine, "save_checkpoint", dies_writing_second_best)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_config(tmp_path, "r", "epochs=2"))
    run_dir = tmp_path / "r"
    assert peek_checkpoint(run_dir / "best.pt").epoch == 1 and peek_checkpoint(run_dir / "last.pt").epoch == 2
    assert run_checkpoint(run_dir) == run_dir / "last.pt"
    assert load_checkpoint(run_dir)["epoch"] == 2
    leftover = run_dir / ".last.pt.k1ll3d.tmp"
    leftover.write_bytes(b"half of a checkpoint")
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    engine.train(tiny_config(tmp_path, "r", "epochs=2", "resume=auto"))
    assert peek_checkpoint(run_dir / "best.pt").epoch == 2 and not leftover.exists()
    assert run_checkpoint(run_dir) == run_dir / "last.pt"


def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    """A CLI run holds its run directory (a second writer is refused naming its pid); killed with SIGKILL once
    its first checkpoint exists, it leaves a loadable last.pt and a stale lock; resume=auto takes the lock over
    and ends with the uninterrupted run's weights, bit for bit."""
    args = ["epochs=4", "st.num_subnets=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, "-m", "stimulative", "train", *tiny(tmp_path, "killed"), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "killed"
    deadline = time.monotonic() + 180
    while not (run_dir / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {proc.pid} "):
            engine.train(load_config(None, [*tiny(tmp_path, "killed"), *args]))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] >= 1 and (run_dir / ".lock").exists()

    engine.train(load_config(None, [*tiny(tmp_path, "killed"), *args, "resume=auto"]))
    engine.train(load_config(None, [*tiny(tmp_path, "full"), *args]))
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(run_dir / "last.pt")
    assert a["step"] == b["step"] == 4 * STEPS_PER_EPOCH
    assert_same_state(a["model"], b["model"])
    assert not (run_dir / ".lock").exists()


def test_resume_refuses_other_data_classes_and_exported_checkpoints(tmp_path):
    """data.root may move (a free key), but not to other data (the fingerprint) nor, for a checkpoint without a
    fingerprint, to data with other classes; an exported network cannot be resumed. Each is one clear error,
    before the model is loaded."""
    three = make_folder(tmp_path / "three")
    two = make_folder(tmp_path / "two")
    shutil.rmtree(two / "train" / "emu")
    shutil.rmtree(two / "test" / "emu")
    data = ["data.name=folder", "data.augment=none", "data.input_size=8", f"data.cache_dir={tmp_path / 'cache'}",
            "data.workers=1", "batch_size=4", "eval_batch_size=4", "epochs=2", "max_steps=3", "threads=1",
            "device=cpu", "model.name=cifar_resnet_tiny", f"out_dir={tmp_path}", "name=r"]
    engine.train(load_config(None, [*data, f"data.root={three}"]))
    with pytest.raises(ConfigError, match="trained on other data"):
        engine.train(load_config(None, [*data, f"data.root={two}", "resume=auto", "max_steps=0"]))
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    del ckpt["data_fingerprint"]    # an older checkpoint: the classes are still checked
    save_checkpoint(ckpt, tmp_path / "r" / "last.pt")
    with pytest.raises(ConfigError, match="checkpoint has 3 classes, the data 'folder' has 2"):
        engine.train(load_config(None, [*data, f"data.root={two}", "resume=auto", "max_steps=0"]))
    exported = save_checkpoint(exported_checkpoint(build_model(load_config(None, data), 3), ckpt["config"], 3,
                                                   [1, 1, 1]), tmp_path / "exported.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        engine.train(load_config(None, [*data, "name=e", f"data.root={three}", f"resume={exported}"]))


def test_resume_refuses_other_data_with_the_same_classes_and_steps(tmp_path):
    """The checkpoint records its training data's fingerprint (file count and bytes): other data with the same
    classes and steps per epoch is refused, naming both roots; a copy elsewhere resumes; a checkpoint without a
    fingerprint (older versions) resumes as before."""
    first = make_folder(tmp_path / "first")
    other = make_folder(tmp_path / "other", size=9)     # same classes and number of images, other images
    data = ["data.name=folder", "data.augment=none", "data.input_size=8", f"data.cache_dir={tmp_path / 'cache'}",
            "data.workers=1", "batch_size=4", "eval_batch_size=4", "epochs=3", "threads=1", "device=cpu",
            "model.name=cifar_resnet_tiny", f"out_dir={tmp_path}", "name=r"]
    engine.train(load_config(None, [*data, f"data.root={first}", "max_steps=3"]))
    run_dir = tmp_path / "r"
    last = run_dir / "last.pt"
    recorded = load_checkpoint(last)["data_fingerprint"]
    assert recorded["kind"] == "folder" and recorded["files"] == 12 and recorded["bytes"] > 0
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=re.escape(f'trained on other data ("{first}": 12 training images of '
                                                    f'{recorded["bytes"]} bytes in all; data.root "{other}": 12 '
                                                    "training images of ")):
        engine.train(load_config(None, [*data, f"data.root={other}", "resume=auto", "max_steps=4"]))
    assert snapshot(run_dir) == before and not (run_dir / ".lock").exists()

    copy = shutil.copytree(first, tmp_path / "elsewhere")    # new paths and modification times, same data
    engine.train(load_config(None, [*data, f"data.root={copy}", "resume=auto", "max_steps=6"]))
    assert load_checkpoint(last)["step"] == 6

    old = load_checkpoint(last)
    del old["data_fingerprint"]                               # a checkpoint of an older version
    save_checkpoint(old, last)
    engine.train(load_config(None, [*data, f"data.root={other}", "resume=auto"]))
    assert load_checkpoint(last)["step"] == 9
