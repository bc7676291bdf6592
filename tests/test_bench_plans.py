"""The benchmark orchestrators plan the runs they are documented to plan (benchmarks/*.py are scripts)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench_lm(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # its `from machine import ...`
    spec = importlib.util.spec_from_file_location("bench_lm", BENCH / "bench_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(methods=["ct", "st", "stpp", "layerskip"], equal_time=True, equal_time_of="stpp", steps=8000,
                chunk_steps=0, alone_depth=4, seed=0, threads=1, set=[], quick=False, prefix="lm_",
                work=str(tmp_path / "work"), time_ratios=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("layerskip_cost,planned", [(1.10, False), (1.00, True)])
def test_bench_lm_equal_time_from_side_by_side_step_costs(bench_lm, tmp_path, layerskip_cost, planned):
    ratios = tmp_path / "step_cost_recipes.json"
    ratios.write_text(json.dumps({"recipe_cost_x_ct": {"ct": 1.0, "st": 1.04, "stpp": 1.11,
                                                       "layerskip": layerskip_cost}}))
    args = _args(tmp_path, time_ratios=str(ratios))
    runs = bench_lm.plan(args)
    assert runs["ct_time"]["after"] == ["ct"]  # no need to wait for ST++'s own time
    cmd = bench_lm.command("ct_time", runs["ct_time"], args, tmp_path)
    assert "steps=8880" in cmd and "steps=8000" not in cmd
    # a peer within 3% of ST++'s step cost: equal steps already is equal time
    assert ("layerskip_time" in runs) is planned
    if planned:
        cmd = bench_lm.command("layerskip_time", runs["layerskip_time"], args, tmp_path)
        assert "steps=8880" in cmd and "recipes/lm_llama_layerskip.yaml" in cmd


def test_bench_lm_equal_time_from_the_runs_own_times(bench_lm, tmp_path):
    args = _args(tmp_path)
    runs = bench_lm.plan(args)
    assert runs["ct_time"]["after"] == ["ct", "stpp"] and runs["layerskip_time"]["after"] == ["layerskip", "stpp"]
    (tmp_path / "stpp.json").write_text(json.dumps({"train_time_s": 1200.0, "steps": 8000}))
    (tmp_path / "layerskip.json").write_text(json.dumps({"train_time_s": 1000.0, "steps": 8000}))
    assert "steps=9600" in bench_lm.command("layerskip_time", runs["layerskip_time"], args, tmp_path)


def test_bench_lm_time_ratios_need_steps(bench_lm, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--time-ratios", "x.json"])
    with pytest.raises(SystemExit):
        bench_lm.main()
    assert "--steps" in capsys.readouterr().err
