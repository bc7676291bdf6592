"""The train / eval / demo commands end to end (tiny model, synthetic data, CPU)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import stimulative as st
from stimulative.cli import main
from stimulative.core.sampling import SampleSpace
from stimulative.data import build_data
from stimulative.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from stimulative.train.state import FORMAT


def tiny(tmp_path, name="run") -> list[str]:
    return ["data.name=synthetic", "model.name=cifar_resnet_tiny", "data.input_size=16", "data.train_subset=128",
            "data.test_subset=64", "batch_size=32", "eval_batch_size=32", "threads=1", "device=cpu",
            f"out_dir={tmp_path}", f"name={name}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short ST run shared by the eval tests: (run dir, its config)."""
    out = tmp_path_factory.mktemp("cli")
    assert main(["train", *tiny(out), "epochs=2", "st.num_subnets=1", "ema=0.5"]) == 0
    loaded = load_model(out / "run")
    return out / "run", loaded.config


def eval_json(args: list[str], tmp_path) -> dict:
    path = tmp_path / "result.json"
    assert main(["eval", *args, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_train_command_prints_run_dir_and_writes_files(tmp_path, capsys):
    assert main(["train", *tiny(tmp_path), "epochs=1", "st.num_subnets=2", "eval_depths=[[1,1,1]]"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert f"writing the run to {run}" in out
    assert re.search(r"finished 1 epochs \(4 steps\); final test acc \d+\.\d\d%", out)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "training.png"):
        assert (run / name).is_file(), name


def test_nan_loss_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", *tiny(tmp_path), "epochs=3", "st.num_subnets=1", "optim.lr=1e6"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert re.match(r"stimulative train: error: training stopped at epoch \d+, step \d+: .*NaN(/| or )inf", err)
    last = tmp_path / "run" / "last.pt"
    if last.exists():  # whatever was saved is a finite, loadable model
        ckpt = load_checkpoint(last)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
        assert f"epoch {ckpt['epoch'] + 1}," in err


def test_eval_full_network_equals_evaluate(trained, tmp_path, capsys):
    run, cfg = trained
    result = eval_json([str(run), "--bn-recal", "0"], tmp_path)  # the default re-estimates BN on 2000 images
    loaded = load_model(run)
    bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    expected = st.evaluate(loaded.model, bundle.test)
    assert result["acc"] == expected["acc"] and result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert result["n"] == 64 and result["depths"] == [2, 2, 2] and result["full_network"]
    line = capsys.readouterr().out.strip()
    assert f"full network 2,2,2: top-1 {expected['acc']:.2f}% loss {expected['loss']:.4f} on 64 test images" in line


def test_eval_subnetwork_with_bn_recal_equals_evaluate_depth(trained, tmp_path):
    run, cfg = trained
    result = eval_json([str(run), "--depth", "1,2,1", "--bn-recal", "64"], tmp_path)
    loaded = load_model(run)
    bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    expected = st.evaluate_depth(loaded.ed, [1, 2, 1], bundle.test, bundle.train, bn_images=64)
    assert (result["acc"], result["n"], result["depths"]) == (expected["acc"], 64, [1, 2, 1])
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert not result["full_network"] and result["bn_recal"] == 64


def test_eval_exported_subnetwork(trained, tmp_path):
    run, cfg = trained
    loaded = load_model(run / "last.pt")
    sub = loaded.ed.extract([1, 1, 1])
    path = tmp_path / "sub111.pt"
    save_checkpoint({"format": FORMAT, "model": sub.state_dict(), "config": load_checkpoint(run / "last.pt")["config"],
                     "num_classes": 10, "depths": [1, 1, 1]}, path)
    exported = eval_json([str(path)], tmp_path)
    inside = eval_json([str(run / "last.pt"), "--depth", "1,1,1"], tmp_path)
    assert exported["acc"] == inside["acc"] and exported["loss"] == pytest.approx(inside["loss"], rel=1e-5)
    assert exported["depths"] == [1, 1, 1]
    assert main(["eval", str(path), "--depth", "2,2,2"]) == 2


def test_eval_ema_and_overrides(trained, tmp_path):
    run, _ = trained
    ema = eval_json([str(run / "last.pt"), "--ema"], tmp_path)
    assert ema["ema"] is True
    small = eval_json([str(run), "data.test_subset=32"], tmp_path)
    assert small["n"] == 32
    # overrides may also follow the options (every command parses positionals intermixed)
    path = tmp_path / "after.json"
    assert main(["eval", str(run), "--json", str(path), "data.test_subset=16"]) == 0
    assert json.loads(path.read_text())["n"] == 16


@pytest.mark.parametrize("args, message", [
    (["{run}", "--depth", "1,9,1"], r"outside"),
    (["{run}", "--depth", "a,b"], r"comma-separated integers"),
    (["{tmp}/missing.pt"], r"does not exist"),
    (["{run}", "data.nme=x"], r"unknown config key 'data.nme'"),
    (["{run}", "--bn-recal", "-1"], r"--bn-recal must be >= 0"),
])
def test_eval_errors_are_one_line(trained, tmp_path, capsys, args, message):
    run, _ = trained
    args = [a.format(run=run, tmp=tmp_path) for a in args]
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("stimulative eval: error:")
    assert re.search(message, err)


def test_eval_ema_missing_is_an_error(tmp_path, capsys):
    assert main(["train", *tiny(tmp_path), "epochs=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--ema"]) == 2
    assert "has no EMA weights" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "main network (test acc): CT" in out and "loafing gap" in out
    demo = json.loads((tmp_path / "demo.json").read_text())
    ed = st.ElasticDepth(st.create_model("cifar_resnet_tiny", num_classes=10))
    assert [r["depths"] for r in demo["rows"]] == [",".join(map(str, d)) for d in SampleSpace.for_model(ed)]
    for name in ("ct", "stpp"):
        assert (tmp_path / name / "last.pt").is_file()
        assert set(demo["summary"][name]) >= {"main_acc", "mean_subnet_acc", "loafing_gap"}
    assert (tmp_path / "loafing.csv").read_text().startswith("depths,blocks,ct_acc,stpp_acc")
    assert (tmp_path / "loafing.png").stat().st_size > 0
    # the table's full-network row is the trained network re-evaluated with BN re-estimation
    full = demo["rows"][-1]
    assert full["depths"] == "2,2,2" and 0 <= full["ct_acc"] <= 100
