"""Pareto analysis: exact FLOPs, front and budget logic on known rows, the greedy walk's path, and the command
finding the known optimum on a toy model (tight budgets; accuracy monkeypatched to a known function)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import randomize_bn
from torch import nn

import stimulative as st
import stimulative.deploy.pareto as pareto
from stimulative import cli
from stimulative.deploy.pareto import (
    candidate_configs,
    count_flops,
    greedy_walk,
    measure_latency,
    pareto_front,
    select_under_budget,
)
from stimulative.train.checkpoint import load_model, save_checkpoint
from stimulative.train.config import config_from_dict, config_to_dict

FAST = ["--bn-recal", "16", "--repeats", "1", "--warmup", "0", "--latency-batch", "1,4", "data.test_subset=16"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = config_from_dict({"model": {"name": "cifar_resnet_tiny"},
                            "data": {"name": "synthetic", "train_subset": 64, "test_subset": 32},
                            "batch_size": 16, "eval_batch_size": 32})
    torch.manual_seed(0)
    model = randomize_bn(st.create_model("cifar_resnet_tiny", num_classes=10))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"format": "stimulative-v1", "model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 10, "epoch": 1, "step": 1, "metrics": {}, "best_acc": 0.0}, path)
    return path


def tiny_flops(depths):
    ed = st.ElasticDepth(st.create_model("cifar_resnet_tiny", num_classes=10))
    return count_flops(ed.extract(depths), 32)


def known_accuracy(model, batches, **kwargs):
    """Stand-in for evaluate(): accuracy = 10 * |layer1| + 1 * |layer2| + 5 * |layer3| (blocks kept)."""
    return {"acc": 10.0 * len(model.layer1) + 1.0 * len(model.layer2) + 5.0 * len(model.layer3),
            "loss": 0.0, "n": 16}


# ------------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------------

def test_count_flops_is_exact_for_conv_and_linear():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, 8) == 2 * (8 * 8) * 8 * 3 * 9          # 2 FLOPs per multiply-accumulate
    assert count_flops(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), 2) == 2 * 12 * 5
    # every extra block of cifar_resnet_tiny costs two 3x3 convs with 8*32*32 = 16*16*16 = 32*8*8 MACs per channel
    per_block = 2 * 2 * (8 * 8 * 9 * 32 * 32)
    assert tiny_flops([2, 1, 1]) - tiny_flops([1, 1, 1]) == per_block
    assert tiny_flops([1, 2, 2]) - tiny_flops([1, 1, 1]) == 2 * per_block


def test_measure_latency_is_positive_and_fast():
    model = st.create_model("cifar_resnet_tiny", num_classes=10)
    ms = measure_latency(model, (1, 3, 32, 32), repeats=2, warmup=1)
    assert ms > 0
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_latency(model, (1, 3, 32, 32), repeats=0)


def test_pareto_front_on_known_rows():
    rows = [{"acc": 90, "ms": 3.0}, {"acc": 80, "ms": 4.0}, {"acc": 70, "ms": 1.0},
            {"acc": 90, "ms": 5.0}, {"acc": 95, "ms": 6.0}, {"acc": 70, "ms": 1.0}]
    assert pareto_front(rows, "ms") == [2, 0, 4]
    front = set(pareto_front(rows, "ms"))
    for i, r in enumerate(rows):   # every point off the front is dominated by a front point
        if i not in front:
            assert any(rows[j]["ms"] <= r["ms"] and rows[j]["acc"] >= r["acc"] for j in front)


def test_select_under_budget():
    rows = [{"label": "2,2,2", "acc": 92.0, "flops": 80, "latency_ms_b1": 3.0},
            {"label": "2,1,2", "acc": 91.0, "flops": 60, "latency_ms_b1": 2.0},
            {"label": "1,2,1", "acc": 91.0, "flops": 50, "latency_ms_b1": 2.5},
            {"label": "1,1,1", "acc": 85.0, "flops": 30, "latency_ms_b1": 1.0}]
    assert select_under_budget(rows, budget_flops=1000)["label"] == "2,2,2"
    assert select_under_budget(rows, budget_flops=60)["label"] == "1,2,1"       # accuracy tie: fewer FLOPs
    assert select_under_budget(rows, budget_ms=2.2)["label"] == "2,1,2"
    assert select_under_budget(rows, budget_ms=2.2, budget_flops=55)["label"] == "1,1,1"   # both budgets
    with pytest.raises(ValueError, match="cheapest is 1,1,1 at 1 ms"):
        select_under_budget(rows, budget_ms=0.5)
    with pytest.raises(ValueError, match="give a budget"):
        select_under_budget(rows)


def test_greedy_walk_removes_the_least_important_block_first():
    ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
    calls = []

    def score(config):
        calls.append(list(config))
        return 10 * config[0] + 1 * config[1] + 5 * config[2]

    path = greedy_walk(ed, score)
    assert path[0] == [3, 3, 3] and path[-1] == [1, 1, 1]
    assert len({tuple(c) for c in path}) == len(path) == len(calls)
    # stage 2 (weight 1) is emptied first, then stage 3 (weight 5), then stage 1 (weight 10)
    visited_after_moves = [[3, 2, 3], [3, 1, 3], [3, 1, 2], [3, 1, 1], [2, 1, 1], [1, 1, 1]]
    for config in visited_after_moves:
        assert config in path
    assert [2, 3, 3] in path and [1, 3, 3] not in path   # candidates that lost are not expanded


def test_candidate_configs():
    ed = st.ElasticDepth(st.create_model("cifar_resnet_tiny", num_classes=10))
    assert len(candidate_configs(ed, "all")) == 8 == len(candidate_configs(ed, "auto"))
    sample = candidate_configs(ed, "sample", sample=4, seed=3)
    assert len(sample) == 4 and len({tuple(c) for c in sample}) == 4
    assert [2, 2, 2] in sample and [1, 1, 1] in sample
    assert sample == candidate_configs(ed, "sample", sample=4, seed=3)
    with pytest.raises(ValueError, match="valid choices"):
        candidate_configs(ed, "random")


# ------------------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------------------

def test_pareto_command_tight_budget_picks_the_only_config_that_fits(tiny_ckpt, tmp_path, capsys):
    budget = tiny_flops([1, 1, 1])   # every other config has more FLOPs
    out = tmp_path / "par"
    rc = cli.main(["pareto", str(tiny_ckpt), "--out", str(out), "--budget-flops", str(budget),
                   "--export", str(tmp_path / "sel.onnx"), "--format", "onnx", *FAST])
    assert rc == 0
    data = json.loads((out / "pareto.json").read_text())
    assert data["selected"]["depths"] == [1, 1, 1] and data["strategy"] == "all"
    assert len(data["rows"]) == 8
    with (out / "pareto.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"acc", "flops", "macs", "params", "latency_ms_b1", "latency_ms_b4"} <= set(table[0])
    for r in data["rows"]:
        assert r["macs"] * 2 == r["flops"] and r["latency_ms_b1"] > 0
    assert (out / "pareto.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "sel.onnx.summary.json").read_text())
    assert summary["depths"] == [1, 1, 1] and summary["accuracy"] == data["selected"]["acc"]
    assert "most accurate under" in capsys.readouterr().out


def test_pareto_command_finds_known_optimum(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(pareto, "evaluate", known_accuracy)
    # one block more than the smallest network: (2,1,1)=26, (1,2,1)=17, (1,1,2)=21 fit; (2,1,1) wins
    budget = tiny_flops([2, 1, 1])
    assert budget == tiny_flops([1, 2, 1]) == tiny_flops([1, 1, 2])
    rc = cli.main(["pareto", str(tiny_ckpt), "--out", str(tmp_path), "--budget-flops", str(budget),
                   "--export", str(tmp_path / "best.pt"), *FAST])
    assert rc == 0
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert data["selected"]["label"] == "2,1,1" and data["selected"]["acc"] == 26.0
    # the FLOPs front: one best config per FLOPs level
    front = sorted(r["label"] for r in data["rows"] if r["front_flops"])
    assert front == ["1,1,1", "2,1,1", "2,1,2", "2,2,2"]
    exported = load_model(tmp_path / "best.pt")
    assert exported.depths == [2, 1, 1]
    assert [len(exported.model.layer1), len(exported.model.layer2), len(exported.model.layer3)] == [2, 1, 1]


def test_pareto_command_greedy_walk(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(pareto, "evaluate", known_accuracy)
    assert cli.main(["pareto", str(tiny_ckpt), "--greedy", "--out", str(tmp_path), *FAST]) == 0
    data = json.loads((tmp_path / "pareto.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert labels == ["2,2,2", "1,2,2", "2,1,2", "2,2,1", "1,1,2", "2,1,1", "1,1,1"]
    assert data["strategy"] == "greedy" and data["selected"] is None


def test_pareto_sample_option(tiny_ckpt, tmp_path):
    assert cli.main(["pareto", str(tiny_ckpt), "--sample", "3", "--seed", "1", "--out", str(tmp_path), *FAST]) == 0
    data = json.loads((tmp_path / "pareto.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert len(labels) == 3 and labels[:2] == ["2,2,2", "1,1,1"]


@pytest.mark.parametrize("argv, message", [
    (["--budget-ms", "1e-9"], "no depth configuration fits the budget"),
    (["--budget-ms", "-1"], "--budget-ms must be positive"),
    (["--export", "x.pt"], "--export needs a budget"),
    (["--budget-flops", "1e9", "--export", "x.bin", "--format", "tflite"], "valid formats: pt, torchscript"),
    (["--latency-batch", "1,a"], "--latency-batch must be comma-separated ints"),
])
def test_pareto_errors_are_one_line(tiny_ckpt, tmp_path, capsys, argv, message):
    rc = cli.main(["pareto", str(tiny_ckpt), "--out", str(tmp_path), *FAST, *argv])
    err = capsys.readouterr().err.strip()
    last = err.replace("\r", "\n").splitlines()[-1]   # before it: progress bars when the configs were profiled
    assert rc == 2 and last.startswith("stimulative pareto: error:") and message in last
    assert "Traceback" not in err and err.count("error:") == 1
    if "fits the budget" in message:   # the table is still written
        assert (tmp_path / "pareto.json").is_file()


def test_front_area_is_the_mean_of_the_upper_front_on_a_log_axis():
    from stimulative.deploy.pareto import front_area

    acc = {"a": 40.0, "b": 60.0, "c": 55.0, "d": 70.0}
    cost = {"a": 1.0, "b": 10.0, "c": 20.0, "d": 100.0}
    # front: 40 on [1, 10), 60 on [10, 100): (40 * 1 + 60 * 1) / 2 decades; c is dominated by b
    assert front_area(acc, cost) == pytest.approx(50.0)
    assert front_area(acc, {k: 7 * v for k, v in cost.items()}) == pytest.approx(50.0)  # unit-free
    better = {**acc, "a": 45.0}
    assert front_area(better, cost) > front_area(acc, cost)
    assert front_area({"x": 3.0}, {"x": 5.0}) == 3.0
    with pytest.raises(ValueError, match="same"):
        front_area(acc, {"a": 1.0})
