"""The training engine: exact resume, NaN stop, evaluation that never perturbs training, outputs, optimizer/LR."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import yaml

import stimulative as st
import stimulative.train.engine as engine
from stimulative.core.step import NonFiniteLossError
from stimulative.io import read_jsonl as read_metrics
from stimulative.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from stimulative.train.config import Config, load_config
from stimulative.train.log import subnet_metric, subnet_metric_label
from stimulative.train.optim import build_optimizer, build_scheduler
from stimulative.train.runtime import amp_dtype, resolve_device

STEPS_PER_EPOCH = 4  # 128 synthetic images / batch 32


def tiny_config(tmp_path, name="run", *overrides: str) -> Config:
    base = ["data.name=synthetic", "model.name=cifar_resnet_tiny", "data.input_size=16", "data.train_subset=128",
            "data.test_subset=64", "batch_size=32", "eval_batch_size=64", "threads=1", "device=cpu",
            f"out_dir={tmp_path}", f"name={name}", "optim.lr=0.05"]
    return load_config(None, base + list(overrides))


def state(path) -> dict:
    return load_checkpoint(path)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


ST_ON = ["st.num_subnets=2", "st.min_input_scale=0.6", "st.kl_norm=layer", "st.amplitude=adaptive", "ema=0.9",
         "eval_depths=[[1,1,1]]", "bn_recal_images=32", "optim.warmup_epochs=1"]


def test_resume_gives_identical_weights(tmp_path):
    """4 epochs in one go == 2 epochs, stop, resume=auto for the rest (ST on, EMA, BN re-estimation, warmup)."""
    full = engine.train(tiny_config(tmp_path, "full", "epochs=4", *ST_ON))
    engine.train(tiny_config(tmp_path, "split", "epochs=4", f"max_steps={2 * STEPS_PER_EPOCH}", *ST_ON))
    half = state(tmp_path / "split" / "last.pt")
    assert half["epoch"] == 2 and half["step"] == 2 * STEPS_PER_EPOCH
    resumed = engine.train(tiny_config(tmp_path, "split", "epochs=4", "resume=auto", *ST_ON))
    a, b = state(tmp_path / "full" / "last.pt"), state(tmp_path / "split" / "last.pt")
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"], b["ema"])
    assert a["step"] == b["step"] == 4 * STEPS_PER_EPOCH
    assert a["space_rng"] == b["space_rng"] and a["step_rng"] == b["step_rng"]
    assert full["final"]["test_acc"] == resumed["final"]["test_acc"]
    # the resumed run's metrics file has each epoch exactly once
    assert [r["epoch"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_mid_epoch_is_exact(tmp_path):
    """A stop in the middle of an epoch resumes at the next batch of the same epoch."""
    engine.train(tiny_config(tmp_path, "full", "epochs=2", "st.num_subnets=1", "st.min_input_scale=0.5"))
    cut = STEPS_PER_EPOCH + 2
    engine.train(tiny_config(tmp_path, "cut", "epochs=2", f"max_steps={cut}", "st.num_subnets=1",
                             "st.min_input_scale=0.5"))
    mid = state(tmp_path / "cut" / "last.pt")
    assert mid["epoch"] == 1 and mid["step"] == cut
    engine.train(tiny_config(tmp_path, "cut", "epochs=2", f"resume={tmp_path / 'cut' / 'last.pt'}",
                             "st.num_subnets=1", "st.min_input_scale=0.5"))
    assert_same_state(state(tmp_path / "full" / "last.pt")["model"], state(tmp_path / "cut" / "last.pt")["model"])


def test_evaluation_settings_do_not_change_training(tmp_path):
    """BN re-estimation, eval sub-networks and EMA eval run on copies: the trained weights and BN buffers are
    bit-identical to a run that never evaluates in between."""
    engine.train(tiny_config(tmp_path, "a", "epochs=2", "st.num_subnets=1", "eval_every=5"))
    engine.train(tiny_config(tmp_path, "b", "epochs=2", "st.num_subnets=1", "eval_every=1",
                             "bn_recal_images=64", "eval_depths=[[1,1,1],[2,1,2]]"))
    assert_same_state(state(tmp_path / "a" / "last.pt")["model"], state(tmp_path / "b" / "last.pt")["model"])


def test_run_outputs(tmp_path):
    cfg = tiny_config(tmp_path, "out", "epochs=2", "st.num_subnets=1", "eval_depths=[[1,1,1]]", "ema=0.5",
                      "tensorboard=true")
    summary = engine.train(cfg)
    run = tmp_path / "out"
    assert summary["run_dir"] == str(run)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "training.png"):
        assert (run / name).stat().st_size > 0, name
    assert any((run / "tensorboard").iterdir())
    resolved = load_config(run / "config.yaml")
    assert resolved.model.num_classes == 10 and resolved.st.num_subnets == 1
    records = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("step", "lr", "train_loss", "train_loss_main", "train_loss_subnet", "train_acc", "test_acc",
                "test_loss", "test_acc_d1-1-1", "ema_test_acc", "img_per_s", "epoch_time_s", "epoch_cpu_s"):
        assert key in records[-1], key
    # the epoch's CPU time: positive, and with one thread at most its wall time plus the timer's resolution
    assert 0 < records[-1]["epoch_cpu_s"] <= records[-1]["epoch_time_s"] * max(1, torch.get_num_threads()) + 0.05
    assert records[-1]["train_loss_subnet"] > 0
    assert math.isclose(records[-1]["train_loss"], records[-1]["train_loss_main"] + records[-1]["train_loss_subnet"])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_acc_d1-1-1" in header and len((run / "metrics.csv").read_text().splitlines()) == 3
    # checkpoints load with weights_only=True and carry everything needed to resume
    ckpt = torch.load(run / "last.pt", weights_only=True)
    for key in ("format", "model", "ema", "config", "num_classes", "epoch", "step", "optimizer", "scheduler",
                "rng", "space_rng", "step_rng", "metrics", "best_acc", "history"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * STEPS_PER_EPOCH
    assert ckpt["best_acc"] == max(r["test_acc"] for r in records)
    loaded = load_model(run)
    result = st.evaluate(loaded.model, _test_batches(cfg))
    assert result["acc"] == load_checkpoint(run / "best.pt")["metrics"]["test_acc"]
    ema = load_model(run / "last.pt", use_ema=True)
    assert not torch.equal(ema.model.fc.weight, load_model(run / "last.pt").model.fc.weight)


def _test_batches(cfg):
    from stimulative.data import build_data

    return build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed).test


def test_training_reduces_loss_with_st(tmp_path):
    summary = engine.train(tiny_config(tmp_path, "learn", "epochs=6", "st.num_subnets=2", "optim.lr=0.1"))
    records = read_metrics(tmp_path / "learn" / "metrics.jsonl")
    assert records[-1]["train_loss_main"] < records[0]["train_loss_main"] - 0.3
    assert summary["final"]["train_acc"] > 20  # chance: 10%


def tamper_training_batches(monkeypatch, tamper) -> None:
    """Make ``engine.train`` see its training batches through ``tamper(epoch, i, x) -> x`` (0-based)."""
    real_build = engine.build_data

    def build_tampered(*args, **kwargs):
        bundle = real_build(*args, **kwargs)
        clean = bundle.train

        class Tampered:
            def __len__(self):
                return len(clean)

            def set_epoch(self, epoch):
                self.epoch = epoch
                clean.set_epoch(epoch)

            def __iter__(self):
                for i, (x, y) in enumerate(clean):
                    yield tamper(self.epoch, i, x), y

        bundle.train = Tampered()
        return bundle

    monkeypatch.setattr(engine, "build_data", build_tampered)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """NaN images in epoch 2: a clear NonFiniteLossError naming the epoch; last.pt still holds epoch 1."""
    tamper_training_batches(monkeypatch, lambda epoch, i, x: x * float("nan") if epoch == 1 and i == 1 else x)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 6.*last.pt keeps the last good epoch"):
        engine.train(tiny_config(tmp_path, "nan", "epochs=3", "st.num_subnets=1"))
    ckpt = state(tmp_path / "nan" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(read_metrics(tmp_path / "nan" / "metrics.jsonl")) == 1


def test_kl_start_epoch_and_schedule(tmp_path):
    engine.train(tiny_config(tmp_path, "ramp", "epochs=3", "st.num_subnets=1", "st.start_epoch=1",
                             "st.kl_schedule=cosine_up"))
    records = read_metrics(tmp_path / "ramp" / "metrics.jsonl")
    assert records[0]["train_loss_subnet"] == 0 and records[0]["kl_weight"] == 0
    assert records[1]["kl_weight"] == pytest.approx(0.5 * (1 - math.cos(math.pi / 3)))
    assert records[2]["train_loss_subnet"] > 0


def test_bf16_autocast_on_cpu(tmp_path):
    summary = engine.train(tiny_config(tmp_path, "bf16", "epochs=1", "amp=bf16", "st.num_subnets=1",
                                       "channels_last=true", "optim.clip_grad=1.0"))
    assert math.isfinite(summary["final"]["train_loss"])
    assert load_checkpoint(tmp_path / "bf16" / "last.pt")["model"]["fc.weight"].dtype == torch.float32


def test_bad_eval_depths_and_fp16_on_cpu_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"eval_depths entry \[1, 5, 1\].*outside"):
        engine.train(tiny_config(tmp_path, "bad", "eval_depths=[[1,5,1]]"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        engine.train(tiny_config(tmp_path, "bad", "amp=fp16"))


def test_resume_from_missing_path_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path, "r")
    cfg.resume = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        engine.train(cfg)


# ---------------------------------------------------------------------------------------------------------------
# checkpoint atomicity
# ---------------------------------------------------------------------------------------------------------------

def test_failed_checkpoint_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    old = load_checkpoint(path)
    assert old["epoch"] == 1 and torch.equal(old["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


# ---------------------------------------------------------------------------------------------------------------
# optimizer / schedule / small pieces
# ---------------------------------------------------------------------------------------------------------------

def test_optimizer_groups_no_decay_on_bn_and_bias():
    model = st.create_model("cifar_resnet_tiny", num_classes=10)
    cfg = Config()
    opt = build_optimizer(model, cfg)
    no_decay, decay = opt.param_groups
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == cfg.optim.weight_decay
    assert all(p.ndim <= 1 for p in no_decay["params"]) and all(p.ndim > 1 for p in decay["params"])
    assert {id(p) for p in no_decay["params"]} >= {id(model.bn1.weight), id(model.fc.bias)}
    assert opt.param_groups[0]["nesterov"] is True
    cfg.optim.no_decay_bn_bias = False
    assert len(build_optimizer(model, cfg).param_groups) == 1
    cfg.optim.name = "adamw"
    assert isinstance(build_optimizer(model, cfg), torch.optim.AdamW)


def test_cosine_schedule_with_warmup_and_min_lr():
    model = torch.nn.Linear(2, 2)
    cfg = load_config(None, ["epochs=10", "optim.lr=0.1", "optim.warmup_epochs=2", "optim.min_lr=0.001"])
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)              # warmup 1/10 of the way
    assert lrs[9] == pytest.approx(0.1)               # end of warmup (10 steps)
    assert max(lrs) == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)   # after the last step: min_lr
    assert all(a >= b - 1e-12 for a, b in zip(lrs[9:], lrs[10:]))   # monotone decay after warmup


def test_onecycle_and_constant_schedules():
    model = torch.nn.Linear(2, 2)
    cfg = load_config(None, ["epochs=4", "optim.lr=0.2", "optim.schedule=onecycle"])
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 40
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.2) and lrs[0] < 0.02 and lrs[-1] < 1e-4
    cfg = load_config(None, ["optim.schedule=constant", "optim.lr=0.3"])
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=3)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3)


def test_resolve_device_and_amp():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu0")
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert amp_dtype("none", torch.device("cpu")) is None
    assert subnet_metric([1, 2, 3]) == "test_acc_d1-2-3" and subnet_metric_label("test_acc_d1-2-3") == "1,2,3"


def test_config_yaml_of_a_run_is_fully_resolved(tmp_path):
    engine.train(tiny_config(tmp_path, "cfg", "epochs=1"))
    data = yaml.safe_load((tmp_path / "cfg" / "config.yaml").read_text())
    assert data["model"]["num_classes"] == 10 and data["data"]["name"] == "synthetic"
    assert json.loads(json.dumps(data)) == data
