"""The analysis commands (loafing, logits, erf, report): files written, numbers consistent, clear errors.

Checkpoints are made here (tiny CIFAR ResNet, synthetic data, a few ST steps), never with the engine, so these
tests only depend on the core API.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import stimulative as st
from stimulative.analysis.erf import effective_receptive_field, erf_radius
from stimulative.analysis.report import _read_run, config_diff
from stimulative.cli import main
from stimulative.data import build_data
from stimulative.runs import select_configs
from stimulative.train.checkpoint import load_model, save_checkpoint
from stimulative.train.config import config_from_dict, config_to_dict

DATA = {"name": "synthetic", "train_subset": 64, "test_subset": 48}


def _config(name: str, num_subnets: int = 0, model: str = "cifar_resnet_tiny"):
    return config_from_dict({"name": name, "model": {"name": model}, "data": DATA, "batch_size": 16,
                             "eval_batch_size": 32, "st": {"num_subnets": num_subnets}})


def _write_run(run_dir: Path, name: str, num_subnets: int, steps: int = 4, seed: int = 0) -> Path:
    """A run directory like the engine writes: best.pt (briefly trained), config.yaml, metrics.jsonl."""
    cfg = _config(name, num_subnets)
    torch.manual_seed(seed)
    model = st.create_model("cifar_resnet_tiny", num_classes=10)
    ed = st.ElasticDepth(model)
    data = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=0)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=seed), num_subnets=num_subnets, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i, (x, y) in enumerate(data.train):
        if i == steps:
            break
        step(x, y)
        opt.step()
        opt.zero_grad()
    model.eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"format": "stimulative-v1", "model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 10, "epoch": 2, "step": steps, "metrics": {}, "best_acc": 0.0},
                    run_dir / "best.pt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    records = [{"epoch": e, "step": 2 * e, "train_loss_main": 2.3 - 0.1 * e, "train_loss_subnet": 0.1 * num_subnets,
                "train_acc": 10.0 + e, "test_acc": 11.0 + e + num_subnets, "test_loss": 2.2,
                "test_acc_d1-1-1": 5.0 + e} for e in (1, 2)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"ct": _write_run(root / "ct", "ct", 0), "st": _write_run(root / "st", "st", 1, seed=1)}


def _data(path: Path, **overrides):
    loaded = load_model(path)
    cfg = loaded.config
    for key, value in overrides.items():
        setattr(cfg.data, key, value)
    return loaded, build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------------------
# loafing
# ------------------------------------------------------------------------------------------------------------

def test_loafing_every_subnet_full_row_equals_evaluate(runs, tmp_path):
    out = tmp_path / "loafing"
    assert main(["loafing", str(runs["ct"]), "--out", str(out), "--bn-recal", "32", "--no-progress"]) == 0
    result = json.loads((out / "loafing.json").read_text())
    rows = result["rows"]
    assert [r["depths"] for r in rows if r["depths"] in ("2,2,2", "1,1,1")] == ["2,2,2", "1,1,1"]
    assert len(rows) == 8  # 2 x 2 x 2 ordered configs of the tiny net, all evaluated by default
    loaded, data = _data(runs["ct"])
    full = next(r for r in rows if r["depths"] == "2,2,2")
    expected = st.evaluate(loaded.model, data.test)
    assert full["acc"] == expected["acc"] and full["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert full["n"] == 48 and full["num_blocks"] == 6
    recal = st.evaluate_depth(loaded.ed, [1, 1, 1], data.test, data.train, bn_images=32)
    smallest = next(r for r in rows if r["depths"] == "1,1,1")
    assert smallest["acc_bn"] == recal["acc"] and smallest["num_blocks"] == 3
    # the eval command (if present) prints the same number for the full network
    try:
        from stimulative.runs import evaluate_checkpoint
    except ImportError:
        evaluate_checkpoint = None
    if evaluate_checkpoint is not None:
        assert evaluate_checkpoint(str(runs["ct"]), device="cpu")["acc"] == full["acc"]
    summary = result["summary"][0]
    others = [r["acc"] for r in rows if r is not full]
    assert summary["mean_drop"] == pytest.approx(full["acc"] - sum(others) / len(others))
    with open(out / "loafing.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["depths"] for r in csv_rows] == [r["depths"] for r in rows]
    assert float(csv_rows[0]["acc"]) == pytest.approx(rows[0]["acc"], rel=1e-5)
    assert (out / "loafing.png").stat().st_size > 10_000


def test_loafing_depth_list_sample_and_trailing_overrides(runs, tmp_path):
    out = tmp_path / "a"
    assert main(["loafing", str(runs["ct"]), str(runs["st"]), "--depths", "2,2,2", "1,2,1", "--bn-recal", "0",
                 "--out", str(out), "--no-progress", "data.test_subset=32"]) == 0
    rows = json.loads((out / "loafing.json").read_text())["rows"]
    assert [(r["run"], r["depths"]) for r in rows] == [("ct", "2,2,2"), ("ct", "1,2,1"), ("st", "2,2,2"),
                                                       ("st", "1,2,1")]
    assert all(r["n"] == 32 and r["acc_bn"] is None for r in rows)


def test_select_configs_sample_is_seeded_and_keeps_extremes():
    ed = st.ElasticDepth(st.create_model("cifar_resnet56", num_classes=10))
    default = select_configs(ed, seed=3)
    assert len(default) == 32  # 9^3 = 729 configs > 64: a sample
    assert [9, 9, 9] in default and [1, 1, 1] in default
    assert select_configs(ed, sample=5, seed=3) == select_configs(ed, sample=5, seed=3)
    assert select_configs(ed, sample=5, seed=3) != select_configs(ed, sample=5, seed=4)
    assert len(select_configs(st.ElasticDepth(st.create_model("cifar_resnet20")), all_configs=True)) == 27


@pytest.mark.parametrize("flag", ["--alone", "--individual"])  # --individual: the name of version 0.1.0
def test_loafing_run_trained_alone_gives_gap(runs, tmp_path, flag):
    # a (1,1,1) network "trained alone": an exported sub-network checkpoint of another model
    torch.manual_seed(5)
    other = st.create_model("cifar_resnet_tiny", num_classes=10).eval()
    small = st.ElasticDepth(other).extract([1, 1, 1])
    cfg = _config("alone111")
    save_checkpoint({"format": "stimulative-v1", "model": small.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 10, "depths": [1, 1, 1], "epoch": 1, "step": 1, "metrics": {}, "best_acc": 0.0},
                    tmp_path / "alone111.pt")
    out = tmp_path / "out"
    args = ["loafing", str(runs["ct"]), "--depths", "2,2,2", flag, str(tmp_path / "alone111.pt"), "--bn-recal", "0",
            "--out", str(out), "--no-progress"]
    if flag == "--alone":
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            assert main(args) == 0
    else:
        with pytest.warns(DeprecationWarning, match="--individual is now --alone"):
            assert main(args) == 0
    result = json.loads((out / "loafing.json").read_text())
    assert result["settings"]["alone"] == {"alone111": str(tmp_path / "alone111.pt")}
    alone = [r for r in result["rows"] if r["kind"] == "alone"]
    inside = {r["depths"]: r for r in result["rows"] if r["kind"] == "inside"}
    assert set(inside) == {"2,2,2", "1,1,1"}  # the matched config was added to the evaluated list
    _, data = _data(runs["ct"])
    assert len(alone) == 1 and alone[0]["depths"] == "1,1,1"
    assert alone[0]["acc"] == st.evaluate(small, data.test)["acc"]
    assert result["summary"][0]["gap_vs_alone"] == pytest.approx(alone[0]["acc"] - inside["1,1,1"]["acc"])



def test_loafing_trains_non_uniform_networks_alone(runs, tmp_path, capsys):
    # --train-alone builds a (1,2,2) tiny ResNet (1-block first stage) and trains it with the engine
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(_config("tiny"))))
    out = tmp_path / "out"
    assert main(["loafing", str(runs["ct"]), "--depths", "2,2,2", "--train-alone", str(recipe),
                 "--alone-depths", "1,2,2", "--train-set", "epochs=1", "--bn-recal", "0",
                 "--out", str(out), "--no-progress"]) == 0
    alone_ckpt = load_model(out / "alone" / "tiny_alone_1-2-2" / "last.pt")
    assert alone_ckpt.model.blocks_per_stage == [1, 2, 2]
    result = json.loads((out / "loafing.json").read_text())
    assert [r["depths"] for r in result["rows"] if r["kind"] == "alone"] == ["1,2,2"]
    assert {r["depths"] for r in result["rows"] if r["kind"] == "inside"} == {"2,2,2", "1,2,2"}
    assert result["summary"][0]["n_alone"] == 1
    # the flags of version 0.1.0 still work (one warning each), and reuse the runs it wrote to OUT/individual
    (out / "alone").rename(out / "individual")
    capsys.readouterr()
    with pytest.warns(DeprecationWarning) as caught:
        assert main(["loafing", str(runs["ct"]), "--depths", "2,2,2", "--train-individual", str(recipe),
                     "--individual-depths", "1,2,2", "--train-set", "epochs=1", "--bn-recal", "0",
                     "--out", str(out), "--no-progress"]) == 0
    assert {str(w.message).split(" is now ")[0] for w in caught} >= {"--train-individual", "--individual-depths"}
    assert "exists; reusing it" in capsys.readouterr().out
    assert not (out / "alone").exists()
    assert json.loads((out / "loafing.json").read_text())["rows"] == result["rows"]

# ------------------------------------------------------------------------------------------------------------
# logits
# ------------------------------------------------------------------------------------------------------------

def test_logits_command_norms_match_hand_computation(runs, tmp_path):
    out = tmp_path / "logits"
    assert main(["logits", str(runs["st"]), "--depths", "2,2,2", "1,1,1", "--bn-recal", "0", "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads((out / "logits.json").read_text())
    loaded, data = _data(runs["st"])
    with torch.no_grad(), loaded.ed.depth([1, 1, 1]):
        z = torch.cat([loaded.model(x) for x, _ in data.test])
    row = next(r for r in result["rows"] if r["depths"] == "1,1,1")
    assert row["norm_mean"] == pytest.approx(float(z.norm(dim=1).mean()), rel=1e-5)
    assert row["norm_std"] == pytest.approx(float(z.norm(dim=1).std(unbiased=False)), rel=1e-4)
    assert row["n"] == 48
    blocks = {g["num_blocks"]: g for g in result["by_blocks"]}
    assert set(blocks) == {3, 6} and blocks[6]["relative"] == pytest.approx(1.0)
    assert (out / "logits.png").is_file() and (out / "logits.csv").is_file()


# ------------------------------------------------------------------------------------------------------------
# ERF
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [3, 5])
def test_erf_of_one_conv_is_its_kernel_footprint(k):
    torch.manual_seed(k)
    conv = torch.nn.Conv2d(3, 4, k, padding=k // 2)
    heat = effective_receptive_field(conv, torch.randn(3, 3, 17, 17))
    lo, hi = 8 - k // 2, 8 + k // 2 + 1
    mask = np.zeros((17, 17), dtype=bool)
    mask[lo:hi, lo:hi] = True
    assert ((heat > 0) == mask).all()
    # d out[o, 8, 8] / d x[c, 8 + i - k//2, 8 + j - k//2] = W[o, c, i, j]; summed over o, |.|, summed over c
    expected = conv.weight.detach().double().sum(0).abs().sum(0).numpy()
    np.testing.assert_allclose(heat[lo:hi, lo:hi], expected, rtol=1e-6)


def test_erf_hooks_a_named_layer_and_resizes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Conv2d(2, 2, 3, padding=1),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    heat = effective_receptive_field(model, torch.randn(2, 3, 32, 32), layer="0", size=16)
    assert heat.shape == (16, 16) and int((heat > 0).sum()) == 9  # only the first 3x3 conv is in front
    with pytest.raises(ValueError, match="feature map"):
        effective_receptive_field(model, torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="not a submodule"):
        effective_receptive_field(model, torch.randn(2, 3, 16, 16), layer="nope")


def test_erf_radius_of_known_maps():
    heat = np.zeros((9, 9))
    heat[4, 4] = 1.0
    assert erf_radius(heat)["radius_px"] == 0.0
    heat[4, 4], heat[3, 4], heat[5, 4], heat[4, 3], heat[4, 5] = 0.5, 0.125, 0.125, 0.125, 0.125
    r = erf_radius(heat, mass=0.9)
    assert r["radius_px"] == 1.0 and r["centre"] == [4.0, 4.0] and r["radius_frac"] == pytest.approx(1 / 9)
    assert erf_radius(heat, mass=0.5)["radius_px"] == 0.0


def test_erf_command_grid(runs, tmp_path):
    out = tmp_path / "erf"
    assert main(["erf", str(runs["ct"]), "--sizes", "32,16", "--images", "4", "--out", str(out),
                 "--no-progress"]) == 0
    entries = json.loads((out / "erf.json").read_text())["entries"]
    assert [(e["depths"], e["size"]) for e in entries] == [("2,2,2", 32), ("2,2,2", 16), ("1,1,1", 32),
                                                          ("1,1,1", 16)]
    assert all(np.asarray(e["heatmap"]).shape == (e["size"], e["size"]) for e in entries)
    assert all(0 < e["radius_frac"] <= 1.5 for e in entries) and entries[0]["layer"] == "layer3.1"
    assert (out / "erf.png").is_file()


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------

def test_report_html_is_self_contained(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs["ct"]), str(runs["st"]), "--out", str(out), "--loafing", "--bn-recal", "0",
                 "--no-progress"]) == 0
    page = (out / "report.html").read_text()
    assert "<td>ct</td>" in page and "<td>st</td>" in page and "Network loafing" in page
    assert page.count('src="data:image/png;base64,') == 2  # training curves + loafing
    assert "<img src=\"runs" not in page and "file://" not in page
    md = (out / "report.md").read_text()
    assert "![loafing plot](loafing.png)" in md and (out / "loafing.png").is_file()
    assert "st.num_subnets" in page  # the only differing config key
    assert "Not computed: logits, erf" in page


def test_report_reads_existing_run_analysis(runs, tmp_path):
    assert main(["logits", str(runs["ct"]), "--depths", "2,2,2", "1,1,1", "--bn-recal", "0", "--no-progress"]) == 0
    out = tmp_path / "r"
    assert main(["report", str(runs["ct"]), "--out", str(out)]) == 0
    assert "Logit amplitude" in (out / "report.html").read_text()
    assert (runs["ct"] / "analysis" / "logits.json").is_file()


def test_config_diff_lists_only_differing_keys(runs):
    diff = config_diff([_read_run(runs["ct"]), _read_run(runs["st"])])
    assert diff == [("st.num_subnets", [0, 1])]


# ------------------------------------------------------------------------------------------------------------
# errors: one clean line, exit code 2
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["loafing", "logits", "erf"])
def test_missing_checkpoint_is_one_line_error(command, tmp_path, capsys):
    assert main([command, str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in _error_line(capsys)


@pytest.mark.parametrize("command", ["loafing", "logits", "erf"])
def test_depths_outside_space_is_one_line_error(command, runs, tmp_path, capsys):
    assert main([command, str(runs["ct"]), "--depths", "3,2,2", "--out", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert "3,2,2" in line and "outside" in line


def test_model_without_residual_stages_is_one_line_error(tmp_path, capsys):
    cfg = _config("plain", model="squeezenet1_1")
    model = st.create_model("squeezenet1_1", num_classes=10)
    save_checkpoint({"format": "stimulative-v1", "model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 10}, tmp_path / "plain.pt")
    assert main(["loafing", str(tmp_path / "plain.pt"), "--out", str(tmp_path)]) == 2
    assert "no residual stage" in _error_line(capsys)


def test_report_of_missing_run_dir_is_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_data_with_other_number_of_classes_is_one_line_error(tmp_path, capsys):
    cfg = _config("five")
    model = st.create_model("cifar_resnet_tiny", num_classes=5)
    save_checkpoint({"format": "stimulative-v1", "model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 5}, tmp_path / "five.pt")
    assert main(["logits", str(tmp_path / "five.pt"), "--out", str(tmp_path), "--bn-recal", "0"]) == 2
    assert "5 classes" in _error_line(capsys)
