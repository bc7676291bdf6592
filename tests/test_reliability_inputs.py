"""Issue 14, inputs and messages: bad sizes and subsets, empty and binary recipes, files that are not (whole)
checkpoints, a model without residual stages, errors under torchrun (one line, from rank 0), and a NaN/inf that
is stopped at the step where it appears."""

from __future__ import annotations

import fractions
import os
import subprocess
import sys

import pytest
import torch
from test_cli_train import tiny
from test_engine import tamper_training_batches, tiny_config

import stimulative.train.engine as engine
from stimulative.cli import main
from stimulative.core.step import NonFiniteLossError
from stimulative.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stimulative.train.config import ConfigError, load_config
from stimulative.train.rundir import RunLock


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("override", ["data.input_size=0", "data.train_subset=-5", "data.test_subset=-1",
                                      "data.padding=-2", "data.workers=-1", "stats_every=-1"])
def test_bad_sizes_and_subsets_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key} must be >= "):
        load_config(None, [override])


@pytest.mark.parametrize("content, says", [(b"", "is empty"), (b"# only a comment\n", "is empty"),
                                           (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a text"),
                                           (b"\x00\x01\x02", "not valid YAML")])
def test_empty_or_binary_recipe_is_one_line_naming_the_file(tmp_path, capsys, content, says):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    assert main(["train", str(recipe)]) == 2
    err = one_error_line(capsys)
    assert str(recipe) in err and says in err


@pytest.fixture
def checkpoint_bytes(tmp_path) -> bytes:
    path = save_checkpoint({"model": {"w": torch.arange(600.0)}, "epoch": 1, "config": {}}, tmp_path / "good.pt")
    return path.read_bytes()


def test_truncated_checkpoints_say_so_at_every_cut(tmp_path, checkpoint_bytes):
    path = tmp_path / "cut.pt"
    for cut in [*range(0, len(checkpoint_bytes), 61), *range(len(checkpoint_bytes) - 40, len(checkpoint_bytes))]:
        path.write_bytes(checkpoint_bytes[:cut])
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert str(path) in message and ("truncated or corrupt" in message or "empty" in message), (cut, message)
        assert "Errno" not in message and "miniz" not in message


@pytest.mark.parametrize("kind", ["python objects", "text", "truncated"])
def test_eval_of_a_file_that_is_not_a_checkpoint_is_our_own_line(tmp_path, capsys, checkpoint_bytes, kind):
    path = tmp_path / "x.pt"
    if kind == "python objects":
        torch.save({"model": {}, "ratio": fractions.Fraction(1, 3)}, path)
    elif kind == "text":
        path.write_text("epochs: 3\n")
    else:
        path.write_bytes(checkpoint_bytes[:-100])
    assert main(["eval", str(path)]) == 2
    err = one_error_line(capsys)
    assert str(path) in err and "is not a readable stimulative checkpoint" in err
    assert "weights_only=False" not in err and "Weights only load failed" not in err


def test_model_without_residual_stages_names_the_recipe_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.stages"):
        engine.train(tiny_config(tmp_path, "plain", "epochs=1", "model.name=squeezenet1_0"))


def test_one_block_per_stage_trains_alone_but_refuses_sub_networks(tmp_path):
    """A ResNet-8 has one configuration: CT trains it (a depth trained alone), ST has nothing to sample."""
    engine.train(tiny_config(tmp_path, "alone", "epochs=1", "model.kwargs={blocks_per_stage: 1}"))
    with pytest.raises(ConfigError, match=r"st\.num_subnets"):
        engine.train(tiny_config(tmp_path, "st", "epochs=1", "model.kwargs={blocks_per_stage: 1}",
                                 "st.num_subnets=1"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("problem, says", [("locked", "in use by another run"),
                                           ("data.input_size=0", "data.input_size must be >= 1")])
def test_torchrun_error_is_one_line_from_rank_0_and_every_rank_exits(tmp_path, problem, says):
    """A bad key (every rank) or a run directory in use (rank 0 alone finds it, and shares it): both processes
    stop, none waits for the other, they exit non-zero, and the error is printed once."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("WORLD_SIZE", None)
    lock = RunLock(tmp_path / "ddp").acquire() if problem == "locked" else None
    extra = [] if lock else [problem]
    try:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               "2", "-m", "stimulative", "train", *tiny(tmp_path, "ddp"), "epochs=1", *extra],
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        if lock:
            lock.release()
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "stimulative train: error:" in line]
    assert proc.returncode != 0
    assert len(lines) == 1 and says in lines[0], proc.stderr[-3000:]


def test_non_finite_batchnorm_statistics_stop_at_the_step(tmp_path, monkeypatch):
    """BatchNorm running statistics overflow while the (train-mode) loss stays finite: stopped within log_every
    steps, naming the step, not at the end of the epoch."""
    models = []
    real_build_model = engine.build_model

    def keep_model(*args, **kwargs):
        models.append(real_build_model(*args, **kwargs))
        return models[-1]

    def overflow_at_step_6(epoch, i, x):
        if epoch == 1 and i == 1:   # step 6 (epoch 2, second batch)
            bn = next(m for m in models[0].modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return x

    monkeypatch.setattr(engine, "build_model", keep_model)
    tamper_training_batches(monkeypatch, overflow_at_step_6)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 6: the weights or BatchNorm statistics"):
        engine.train(tiny_config(tmp_path, "nan", "epochs=2", "log_every=1"))
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["epoch"] == 1
