"""LM runs get every guarantee of image runs from the shared engine (stimulative.train): one writer per run
directory, the overwrite guard, a resume whose recipe or data changed is refused before anything is written,
``resume=auto`` without a checkpoint starts afresh while an explicit missing checkpoint is an error, and a kill
during a checkpoint write leaves the previous checkpoint intact and resumes to the uninterrupted run's weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_lm_train import REPO, TINY, text_folder  # noqa: E402

from stimulative.lm.config import ConfigError, load_lm_config  # noqa: E402
from stimulative.lm.train import train_lm  # noqa: E402
from stimulative.train.checkpoint import load_checkpoint  # noqa: E402
from stimulative.train.rundir import RunDirError, RunLock  # noqa: E402

torch.set_num_threads(1)
RECIPE = REPO / "recipes/lm_llama_st.yaml"


def _args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    text = tmp_path / "text"
    if not text.is_dir():
        text_folder(text)
    return [f"data.root={text}", f"out_dir={tmp_path / 'runs'}", f"name={name}", *TINY, "steps=4", "eval_every=2",
            *extra]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_second_writer_is_refused_until_the_first_releases(tmp_path):
    run_dir = tmp_path / "runs" / "lm"
    held = RunLock(run_dir).acquire()  # another live run holds the directory
    try:
        with pytest.raises(RunDirError, match="in use by another run"):
            train_lm(RECIPE, _args(tmp_path, "lm"))
        assert not (run_dir / "last.pt").exists() and not (run_dir / "config.yaml").exists()
    finally:
        held.release()
    assert train_lm(RECIPE, _args(tmp_path, "lm"))["step"] == 4
    assert not (run_dir / ".lock").exists()


def test_a_fresh_run_into_a_run_directory_is_refused_unless_overwrite(tmp_path):
    first = train_lm(RECIPE, _args(tmp_path, "lm"))
    run_dir = Path(first["run_dir"])
    before = _snapshot(run_dir)
    with pytest.raises(RunDirError, match="already holds a run.*resume=auto.*overwrite=true"):
        train_lm(RECIPE, _args(tmp_path, "lm", "seed=1"))
    assert _snapshot(run_dir) == before
    again = train_lm(RECIPE, _args(tmp_path, "lm", "overwrite=true"))
    assert again["final"]["val_loss"] == first["final"]["val_loss"]  # the same run again, not a continuation
    with pytest.raises(ConfigError, match="overwrite=true starts the run afresh"):
        load_lm_config(None, ["overwrite=true", "resume=auto"])


@pytest.mark.parametrize("change, key", [
    ("batch_size=2", "batch_size"),
    ("model.hidden_size=32", "model.hidden_size"),
    ("st.num_subnets=2", "st.num_subnets"),
    ("seed=3", "seed"),
    ("optim.name=sgd", "optim.name"),
    ("data.max_bytes=2000", "data.max_bytes"),
])
def test_a_resume_whose_recipe_changed_is_refused_before_touching_the_run(tmp_path, change, key):
    train_lm(RECIPE, _args(tmp_path, "lm", "max_steps=2"))
    run_dir = tmp_path / "runs" / "lm"
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match=rf"cannot resume .*{key}: .* -> "):
        train_lm(RECIPE, _args(tmp_path, "lm", "resume=auto", change))
    assert _snapshot(run_dir) == before and not (run_dir / ".lock").exists()


def test_a_resume_on_other_data_is_refused_and_a_moved_copy_is_fine(tmp_path, capsys):
    train_lm(RECIPE, _args(tmp_path, "lm", "max_steps=2"))
    run_dir = tmp_path / "runs" / "lm"
    moved = tmp_path / "moved"
    (tmp_path / "text").rename(moved)
    text_folder(tmp_path / "text", files=7)  # other files where the data was
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match="cannot resume .*other data .*training tokens"):
        train_lm(RECIPE, _args(tmp_path, "lm", "resume=auto"))
    assert _snapshot(run_dir) == before
    # the same data moved elsewhere resumes; the optimizer's hyper-parameters and the length are applied
    args = [a for a in _args(tmp_path, "lm", "resume=auto", "steps=6") if not a.startswith("data.root=")]
    summary = train_lm(RECIPE, [*args, f"data.root={moved}", "optim.lr=1e-3"])
    assert summary["step"] == summary["steps"] == 6
    assert "resume: applying steps: 4 -> 6; optim.lr: 0.002 -> 0.001" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="has done 6 steps, this run has 4"):
        train_lm(RECIPE, [*args, f"data.root={moved}", "steps=4"])


def test_missing_checkpoint_auto_starts_afresh_and_an_explicit_path_is_an_error(tmp_path):
    summary = train_lm(RECIPE, _args(tmp_path, "lm", "resume=auto"))  # nothing to resume: a fresh run
    assert summary["step"] == 4 and len(load_checkpoint(Path(summary["checkpoint"]))["starts"]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="resume checkpoint .*last.pt.* does not exist"):
        train_lm(RECIPE, _args(tmp_path, "other", f"resume={empty}"))
    with pytest.raises(ConfigError, match="resume checkpoint .* does not exist"):
        train_lm(RECIPE, _args(tmp_path, "other", f"resume={tmp_path / 'nowhere.pt'}"))
    assert not (tmp_path / "runs" / "other").exists()


_KILLED_AT_SECOND_SAVE = textwrap.dedent("""
    import os, signal, sys
    import torch
    import stimulative.io as sio
    from stimulative.lm.train import train_lm
    real, saves = torch.save, []
    def save(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:  # the second checkpoint: half written, then SIGKILL
            f.write(b"PK" + b"0" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, f, *a, **k)
    torch.save = save
    train_lm(sys.argv[1], sys.argv[2:])
""")


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resumes_exactly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT_SECOND_SAVE, str(RECIPE), *_args(tmp_path, "killed")],
                          cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_dir = tmp_path / "runs" / "killed"
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2  # the previous checkpoint, intact
    assert list(run_dir.glob(".last.pt.*.tmp"))                 # the interrupted write's temp file
    resumed = train_lm(RECIPE, _args(tmp_path, "killed", "resume=auto"))  # the stale lock is taken over
    assert not list(run_dir.glob(".last.pt.*.tmp")) and resumed["step"] == 4
    full = train_lm(RECIPE, _args(tmp_path, "full"))
    assert _same_weights(Path(full["checkpoint"]), Path(resumed["checkpoint"]))
    assert resumed["final"]["val_loss"] == full["final"]["val_loss"]


def test_cpu_time_is_recorded_and_carried_across_a_resume_and_unknown_after_an_old_checkpoint(tmp_path):
    first = train_lm(RECIPE, _args(tmp_path, "lm", "max_steps=2"))
    cpu2 = first["train_cpu_s"]
    ckpt = load_checkpoint(Path(first["checkpoint"]))
    assert 0 < cpu2 and first["final"]["train_cpu_s"] == cpu2 and ckpt["train_cpu_s"] == cpu2
    # a checkpoint written before CPU time was kept (no train_cpu_s): the total is unknown (None), not a part
    del ckpt["train_cpu_s"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    done = train_lm(RECIPE, _args(tmp_path, "lm", "resume=auto"))
    assert done["step"] == 4 and done["train_cpu_s"] > cpu2  # the resumed steps add to the first start's
    resumed = train_lm(RECIPE, _args(tmp_path, "again", f"resume={old}"))
    assert resumed["step"] == 4 and resumed["train_cpu_s"] is None and resumed["final"]["train_cpu_s"] is None
