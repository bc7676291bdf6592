"""The benchmark scripts plan and the report generator summarises what they are documented to (benchmarks/*.py are
scripts, not modules)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
from scriptload import BENCHMARKS, benchmark_script


@pytest.fixture()
def bench_lm():
    return benchmark_script("bench_lm")


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
    assert runs["ct_time"]["after"] == []  # the steps are known at once: no need to wait for any run
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


def test_bench_lm_equal_time_without_its_runs_is_refused(bench_lm, tmp_path):
    """Without measured ratios CT at ST++'s time needs both runs' times: a plan without CT would wait forever."""
    with pytest.raises(SystemExit, match="ct"):
        bench_lm.plan(_args(tmp_path, methods=["st", "stpp"]))
    ratios = tmp_path / "r.json"
    ratios.write_text(json.dumps({"recipe_cost_x_ct": {"ct": 1.0, "st": 1.02, "stpp": 1.2, "layerskip": 1.1}}))
    runs = bench_lm.plan(_args(tmp_path, methods=["st", "stpp"], time_ratios=str(ratios)))
    assert runs["ct_time"]["after"] == [] and "layerskip_time" not in runs
    # a method within 3% of the reference gets no equal-time run, CT included
    runs = bench_lm.plan(_args(tmp_path, methods=["ct", "st"], equal_time_of="st", time_ratios=str(ratios)))
    assert "ct_time" not in runs


def test_bench_lm_time_ratios_need_steps(bench_lm, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--time-ratios", "x.json"])
    with pytest.raises(SystemExit):
        bench_lm.main()
    assert "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("content, named", [(None, "not a step-cost file"), ("{not json", "not a step-cost file"),
                                            ('{"other": 1}', "not a step-cost file"),
                                            ('{"recipe_cost_x_ct": {"ct": 1.0, "stpp": 1.2}}', "layerskip")])
def test_bench_lm_bad_time_ratios_file_is_one_error(bench_lm, monkeypatch, capsys, tmp_path, content, named):
    ratios = tmp_path / "ratios.json"
    if content is not None:
        ratios.write_text(content)
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--methods", "ct", "stpp", "layerskip", "--equal-time-of",
                                      "stpp", "--steps", "10", "--time-ratios", str(ratios)])
    with pytest.raises(SystemExit):
        bench_lm.main()
    err = capsys.readouterr().err
    assert "--time-ratios" in err and named in err and "Traceback" not in err


def test_peers_crossing_extrapolates_the_equal_time_gap():
    table = benchmark_script("report")
    closing = table.crossing([(75_000, [-4.0, -3.0]), (225_000, [-2.0, -1.5])])
    slope = (-1.75 + 3.5) / math.log10(3)  # points per decade
    assert abs(closing["slope"] - slope) < 1e-9 and closing["now"] == -1.75
    assert abs(math.log10(closing["cross"]) - (math.log10(225_000) + 1.75 / slope)) < 1e-9  # about 675,000
    assert closing["low"] <= closing["cross"] <= closing["high"] and closing["share_closing"] == 1.0
    widening = table.crossing([(75_000, [-1.0, -1.2]), (225_000, [-3.0, -3.2])])
    assert widening["cross"] is None and widening["share_closing"] == 0 and widening["low"] is None
    assert table.crossing([(75_000, [-1.0])]) is None  # one budget is no line
    ahead = table.crossing([(75_000, [-1.0, -2.0]), (225_000, [0.5, 0.2])])
    assert ahead["now"] > 0 and ahead["cross"] is None and ahead["share_closing"] is None
    # almost closed: every resample rises, some cross inside the measured range; all count, none as "never"
    near = table.crossing([(75_000, [-2.0, -1.9, -2.1]), (225_000, [-0.2, 0.1])])
    assert near["share_closing"] == 1.0 and near["low"] < 225_000 < near["high"] < 1e6
    # a noisy flat gap: the line falls, so no crossing, and nothing overflows
    flat = table.crossing([(75_000, [0.6, -0.2, 0.5]), (225_000, [-0.3, -0.1])])
    assert flat["cross"] is None and flat["high"] is None and 0 <= flat["share_closing"] < 1
    # two settings at the same budget (5k x 45 and 15k x 15) are two points of the line, not one pooled sample
    same = table.crossing([(75_000, [-4.0]), (225_000, [-2.0]), (225_000, [-1.5])])
    assert same["now"] == -1.75 and same["budgets"] == [75_000, 225_000]


def test_peers_crossing_lines_pair_seeds_within_a_setting():
    table = benchmark_script("report")

    def rec(setting, variant, seed, acc, image_epochs):
        return {"setting_name": setting, "variant": variant, "seed": seed, "test_acc": acc, "epochs": 15,
                "image_epochs": image_epochs, "mean_depth_acc": None, "method": "ST++", "command": "stimulative train"}

    records = [rec("r20", "stpp", 10, 60.0, 75_000), rec("r20", "sd05_time", 10, 64.0, 75_000),
               rec("r20", "stpp", 11, 61.0, 75_000), rec("r20", "sd05_time", 11, 64.0, 75_000),
               rec("r20_15k", "stpp", 10, 70.0, 225_000), rec("r20_15k", "sd05_time", 10, 72.0, 225_000),
               rec("r20_15k", "stpp", 11, 71.0, 225_000), rec("r20_15k", "sd05_time", 11, 72.5, 225_000)]
    assert table._gaps(records, "stpp", "sd05_time", "test_acc") == {"r20": (75_000, [-4.0, -3.0]),
                                                                      "r20_15k": (225_000, [-2.0, -1.5])}
    assert table._gaps(records, "stpp", "sd05_time", "test_acc", seeds=(0, 1)) == {}  # claim seeds only
    lines = table.crossing_lines(records)
    assert len(lines) == 1 and "stochastic depth p_L=0.5" in lines[0] and "-1.75 points at 225,000" in lines[0]
    assert "reaches 0 at about 67" in lines[0]


def test_peers_resnet8_goal_counts_resnet8_alone_not_the_smallest_depth_of_resnet14():
    table = benchmark_script("report")

    def alone(d, acc):
        return {"method": "alone", "variant": f"alone{6 * d + 2}", "depth_acc": {"1,1,1": acc},
                "command": f"stimulative train x.yaml model.kwargs={{blocks_per_stage: [{d}, {d}, {d}]}}"}

    assert table._smallest(alone(1, 56.25)) == 56.25  # ResNet-8 alone: the deployable ResNet-8 trained by itself
    assert table._smallest(alone(2, 26.8)) is None  # the (1,1,1) inside ResNet-14 alone is no candidate
    stpp = {"method": "ST++", "variant": "stpp", "depth_acc": {"1,1,1": 55.0, "3,3,3": 63.6}, "command": "x"}
    assert table._smallest(stpp) == 55.0


def test_peers_budget_section_table_plot_and_crossing_from_records(tmp_path):
    """Records of two budgets give the budget table, budget.png (linked) and the crossing lines."""
    table = benchmark_script("report")
    real = json.loads((BENCHMARKS / "results" / "peers" / "peers_ct_s10.json").read_text())
    acc = {("r20", "ct"): 62.0, ("r20", "stpp"): 63.0, ("r20", "sd05"): 55.0, ("r20", "sd05_time"): 66.0,
           ("r20_15k", "ct"): 75.0, ("r20_15k", "stpp"): 77.0, ("r20_15k", "sd05"): 72.0,
           ("r20_15k", "sd05_time"): 78.0, ("r20_full", "ct"): 86.0, ("r20_full", "stpp"): 85.0}
    method = {"ct": "CT", "stpp": "ST++", "sd05": "stochastic depth", "sd05_time": "stochastic depth"}
    for (setting, variant), a in acc.items():
        for seed, shift in ((10, 0.0), (11, 0.5)):
            images = {"r20": 5000, "r20_15k": 15000, "r20_full": 50000}[setting]
            rec = dict(real, setting_name=setting, variant=variant, method=method[variant], seed=seed,
                       test_acc=a + shift, train_images=images, image_epochs=images * 15,
                       budget="equal time" if variant.endswith("_time") else "equal epochs",
                       command=real["command"] + (" model.drop_path=0.5" if variant.startswith("sd") else ""),
                       depth_acc={c: v + shift for c, v in real["depth_acc"].items()})
            name = f"peers_{variant}_s{seed}" if setting == "r20" else f"peers_{setting}_{variant}_s{seed}"
            (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    assert table.plot_budget(tmp_path) == tmp_path / "budget.png" and (tmp_path / "budget.png").stat().st_size > 0
    text = table.build_peers(tmp_path)
    assert "| r20_15k | 225,000 | ST++ | 10,11 | 2.00 ± 0.00 |" in text
    assert "| r20_full | 750,000 | ST++ | 10,11 | -1.00 ± 0.00 |" in text  # the full setting is the largest budget
    assert "budget.png" in text
    assert "ST++ − stochastic depth p_L=0.5 at equal time, main network: -1.00 points at 225,000" in text
    # the largest budget with equal-time runs gets its own goals and table, from its records only
    section = text[text.index("`--setting r20_15k`"):]
    assert "| best main network at equal time (ST++'s wall-clock) | **stochastic depth p_L=0.5 (15 ep)** 78.25 ± 0.35 |" \
        in section
    assert "| ST++ | equal epochs | 15 | 10,11 | 77.25 ± 0.35 |" in section


def test_peers_undominated_methods_at_equal_time():
    table = benchmark_script("report")

    def row(variant, main, front, budget="equal time"):
        return {"variant": variant, "label": variant, "epochs": 15, "budget": budget,
                "main": (main, 0.0, 3), "front": (front, 0.0, 3)}

    rows = [row("ct_time", 71, 37), row("ld01_time", 70, 60), row("sd05_time", 66.7, 61.4),
            row("stpp_frac50_time", 67.2, 63.3), row("stpp", 64, 59.5), row("sd05", 80, 80, "equal epochs")]
    (line,) = table.undominated(rows)
    kept = [v for v in ("ct_time", "ld01_time", "sd05_time", "stpp_frac50_time", "stpp", "sd05") if f"{v} (" in line]
    assert kept == ["ct_time", "ld01_time", "stpp_frac50_time"]  # sd05_time and stpp are beaten on both
    assert line.index("ct_time") < line.index("ld01_time") < line.index("stpp_frac50_time")  # best main first


def test_peers_plan_mismatch_compares_the_whole_resolved_config(tmp_path):
    """A run dir made under another plan (recipe changed, other epochs) is reported; free keys are not."""
    bench = benchmark_script("bench_peers")
    import yaml

    from stimulative.train.config import config_to_dict, load_config

    args = argparse.Namespace(runs=str(tmp_path), data=str(tmp_path / "data"), setting="r20", threads=1)
    cmd = bench.train_command("stpp", "peers_stpp_s10", 10, args)
    i = cmd.index("train")
    saved = config_to_dict(load_config(cmd[i + 1], [c for c in cmd[i + 2:] if "=" in c]))
    run = tmp_path / "peers_stpp_s10"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert bench.plan_mismatch(run, cmd) == ""
    (run / "config.yaml").write_text(yaml.safe_dump(dict(saved, threads=2, device="cuda", eval_every=1)))
    assert bench.plan_mismatch(run, cmd) == ""  # where and how it ran: free
    changed = dict(saved, epochs=saved["epochs"] + 3, st=dict(saved["st"], kl_weight=1.0))
    (run / "config.yaml").write_text(yaml.safe_dump(changed))
    assert "epochs" in bench.plan_mismatch(run, cmd) and "st.kl_weight: 1.0" in bench.plan_mismatch(run, cmd)


def test_records_name_the_commits_a_run_was_trained_at(tmp_path):
    """``trained_at``: the distinct library commits of the checkpoint's starts (a resume at another commit adds
    one); a checkpoint from before starts were recorded gives none."""
    import torch

    machine = benchmark_script("machine")
    starts = [{"git_commit": "a" * 40, "git_dirty": False}, {"git_commit": "a" * 40, "git_dirty": False},
              {"git_commit": "b" * 40, "git_dirty": True}]
    torch.save({"format": "stimulative-v1", "starts": starts}, tmp_path / "new.pt")
    torch.save({"format": "stimulative-v1"}, tmp_path / "old.pt")
    assert machine.trained_at(tmp_path / "new.pt") == ["a" * 40, "b" * 40 + "+dirty"]
    assert machine.trained_at(tmp_path / "old.pt") == [] and machine.trained_at(tmp_path / "none.pt") == []


def test_peers_goal_winner_lead_is_paired_over_common_seeds():
    """The lead over the runner-up: per-seed differences on the seeds both have, clear only above twice its std
    and judged from 3 seeds on."""
    table = benchmark_script("report")

    def row(variant, per_seed, budget="equal epochs"):
        values = list(per_seed.values())
        return {"variant": variant, "label": variant, "epochs": 15, "budget": budget, "method": "CT",
                "main": table._stat(values), "front": None, "smallest": None,
                "per_seed": {"main": per_seed, "front": {}, "smallest": {}}}

    a, b = row("a", {10: 65.0, 11: 66.0, 12: 64.0}), row("b", {10: 64.0, 11: 64.8, 12: 63.2, 13: 90.0})
    assert table.lead(a, b, "main") == "+1.00 ± 0.20 over b (paired, seeds 10,11,12): clear (more than twice its std)"
    noisy = row("c", {10: 60.0, 11: 67.0, 12: 64.5})
    assert table.lead(a, noisy, "main").endswith("within seed noise")
    assert table.lead(a, row("d", {1: 50.0}), "main") == "no seed in common with d"
    assert table.lead(a, row("e", {10: 60.0, 11: 61.0}), "main").endswith("2 seeds: too few to judge")
    # ahead by the mean only through a seed the runner-up lacks: on the common seeds the runner-up leads
    assert table.lead(row("f", {10: 63.0, 11: 64.0, 12: 62.0, 13: 80.0}), a, "main").endswith(
        "the runner-up is ahead on these seeds")
    (line,) = [x for x in table.goals([noisy, a]) if x.startswith("| best main network at equal epochs")]
    assert "**a** 65.00 ± 1.00 | +1.17 ± 3.33 over c" in line  # the winner by mean, its lead paired (5, -1, -0.5)
    # ResNet-8 goal (any budget): the runner-up is another method, not the winner's variant at another length
    def small(variant, per_seed, epochs=15):
        r = row(variant, {})
        return dict(r, epochs=epochs, budget="equal time" if epochs != 15 else "equal epochs",
                    smallest=table._stat(list(per_seed.values())), per_seed={"main": {}, "smallest": per_seed})

    rows = [small("x", {10: 60.0, 11: 61.0, 12: 62.0}, 22), small("x", {10: 59.0, 11: 60.0, 12: 61.0}),
            small("y", {10: 55.0, 11: 56.0, 12: 58.0})]
    (line,) = [x for x in table.goals(rows) if x.startswith("| cheapest usable ResNet-8")]
    assert "**x (22 ep)** 61.00 ± 1.00 | +4.67 ± 0.58 over y (paired" in line


def test_peers_add_fit_backfills_older_records_from_their_run_dirs(tmp_path, monkeypatch):
    """``--add-fit`` adds the last epoch's train accuracy and test loss to a record without them, leaves records
    that have them (or whose run dir ended at another epoch) as they are."""
    bench = benchmark_script("bench_peers")
    results, runs = tmp_path / "results", tmp_path / "runs"
    monkeypatch.setattr(bench, "RESULTS", results)
    results.mkdir()
    for name, epochs, last in (("peers_ct_s10", 2, 2), ("peers_st_s10", 2, 1), ("peers_sd05_s10", 2, 2)):
        rec = {"variant": name.split("_")[1], "epochs": epochs, "test_acc": 50.0}
        if name == "peers_sd05_s10":
            rec.update(train_acc=1.0, test_loss=2.0)
        (results / f"{name}.json").write_text(json.dumps(rec))
        (runs / name).mkdir(parents=True)
        rows = [{"epoch": e, "train_acc": 60.0 + e, "test_loss": 1.5 - 0.1 * e} for e in range(1, last + 1)]
        (runs / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (results / "step_times.json").write_text(json.dumps({"epoch_s": {}}))
    bench.add_fit(runs)
    ct = json.loads((results / "peers_ct_s10.json").read_text())
    assert ct["train_acc"] == 62.0 and ct["test_loss"] == pytest.approx(1.3) and ct["test_acc"] == 50.0
    assert "train_acc" not in json.loads((results / "peers_st_s10.json").read_text())  # run dir at epoch 1
    assert json.loads((results / "peers_sd05_s10.json").read_text())["train_acc"] == 1.0  # kept as it was
    assert json.loads((results / "step_times.json").read_text()) == {"epoch_s": {}}
    assert not list(results.glob("*.tmp"))


def test_peers_fit_table_per_budget_from_records():
    """The overfitting table: train − test of each seed averaged per setting and method; nothing when only the
    base setting has records (it answers the budget question) or no record has ``train_acc``."""
    table = benchmark_script("report")

    def rec(setting, variant, seed, train, test, loss, images=75_000):
        return {"setting_name": setting, "variant": variant, "method": "CT" if variant == "ct" else "ST++",
                "budget": "equal epochs", "seed": seed, "epochs": 15, "image_epochs": images, "train_acc": train,
                "test_acc": test, "test_loss": loss, "command": "stimulative train recipe.yaml"}

    base = [rec("r20", "ct", 10, 80.0, 64.0, 1.0), rec("r20", "ct", 11, 82.0, 63.0, 1.2)]
    assert table.fit_table(base) == []
    grown = base + [rec("r20_45ep", "ct", 10, 94.0, 71.0, 1.06, 225_000),
                    rec("r20_45ep", "stpp", 10, 92.0, 72.0, 0.98, 225_000)]
    lines = table.fit_table(grown)
    assert lines[2] == "| r20 | 75,000 | CT | 10,11 | 81.00 ± 1.41 | 63.50 ± 0.71 | 17.50 ± 2.12 | 1.100 ± 0.141 |"
    assert lines[3] == "| r20_45ep | 225,000 | CT | 10 | 94.00 | 71.00 | 23.00 | 1.060 |"
    assert lines[4].startswith("| r20_45ep | 225,000 | ST++ | 10 | 92.00 | 72.00 | 20.00 |")
    assert table.fit_table([{**r, "train_acc": None} for r in grown]) == []


def test_peers_crossing_far_beyond_the_measured_budgets_is_not_given_as_a_number():
    table = benchmark_script("report")
    assert table._far(2_046_715.4, 225_000) == "2,046,715"
    assert table._far(2e22, 225_000) == "beyond 22,500,000 (100x the largest budget)"


def test_reap_returns_the_finished_jobs_and_reports_the_failed(tmp_path, capsys):
    """machine.reap (the job loops of bench_peers and bench_ablation): a running job stays, a finished one is
    returned with its entry, a failed one is dropped with the end of its log printed."""
    import subprocess

    machine = benchmark_script("machine")
    logs = {name: tmp_path / f"{name}.log" for name in ("ok", "bad", "slow")}
    logs["bad"].write_text("step 1\nTraceback: disk full\n")
    code = {"ok": "pass", "bad": "raise SystemExit(3)", "slow": "import time; time.sleep(30)"}
    running = {name: (subprocess.Popen([sys.executable, "-c", code[name]]), name, logs[name]) for name in code}
    running["ok"][0].wait()
    running["bad"][0].wait()
    try:
        done = machine.reap(running)
        assert [(name, entry[1]) for name, entry in done] == [("ok", "ok")] and list(running) == ["slow"]
        out = capsys.readouterr().out
        assert "FAILED bad (exit 3)" in out and "disk full" in out and out.count("FAILED") == 1
    finally:
        running["slow"][0].kill()


def test_bench_decode_draft_model_mode(monkeypatch, tmp_path):
    """``--draft-model``: transformers' assisted generation with a separate draft model, recorded as ``hf_draft``;
    a draft identical to the target has every drafted token accepted and the plain greedy output."""
    bench_decode = benchmark_script("bench_decode")
    monkeypatch.setattr(sys, "argv", ["bench_decode.py", "tiny", "--exits", "--draft-model", "tiny", "--prompts",
                                      "2", "--new-tokens", "8", "--repeats", "1", "--results", str(tmp_path)])
    assert bench_decode.main() == 0
    record = json.loads((tmp_path / "decode_reuse_tiny.json").read_text())
    assert record["draft_model"] == "tiny" and record["draft_layers"] == 4
    assert not any("_exit_" in key for key in record)  # --exits with no values: no early-exit modes
    draft = record["hf_draft"]
    assert draft["drafted"] > 0 and draft["accepted"] == draft["drafted"] and draft["acceptance"] == 1.0
    assert draft["equal_greedy"] and draft["tokens"] == 16 and draft["tokens_per_full_forward"] > 1


def test_bench_decode_bad_draft_model_is_one_line(monkeypatch, tmp_path, capsys):
    """A draft path that is no model, or a draft with another vocabulary, stops with one line naming it; no record."""
    bench_decode = benchmark_script("bench_decode")
    argv = ["bench_decode.py", "tiny", "--exits", "--prompts", "1", "--new-tokens", "4", "--repeats", "1",
            "--results", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--draft-model", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="draft: .*missing.* is neither an LM run directory"):
        bench_decode.main()
    load = bench_decode.load

    def wider_draft(name, spec, args):  # the draft with a vocabulary of 300 tokens instead of 257
        model, prompts = load(name, spec, args)
        if name == "draft":
            model.resize_token_embeddings(300)
        return model, prompts

    monkeypatch.setattr(bench_decode, "load", wider_draft)
    monkeypatch.setattr(sys, "argv", [*argv, "--draft-model", "tiny"])
    assert bench_decode.main() == 2
    err = capsys.readouterr().err
    assert "--draft-model tiny: vocabulary of 300 tokens, tiny has 257" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.json"))


def test_report_writes_docs_pages_not_the_readme(tmp_path, capsys):
    """report.py writes every block into its page of docs/ (or of the folder it is given), --check reports a stale
    page and writes nothing; a page without a block's markers is an error; the blocks' links resolve from docs/;
    the README has no block's markers, so nothing is generated into it."""
    import re

    report = benchmark_script("report")
    repo = BENCHMARKS.parent
    docs = tmp_path / "docs"
    docs.mkdir()
    pages = {}
    for name, (_, page, _) in report.BLOCKS.items():
        pages.setdefault(page, []).append(name)
    for page, names in pages.items():
        (docs / page).write_text("# P\n\n" + "".join(f"<!-- {n}:start (old) -->\nstale\n<!-- {n}:end -->\n\nafter\n"
                                                    for n in names))
    assert report.main(["--docs", str(docs), "--check"]) == 1
    assert "stale" in (docs / "results.md").read_text()  # --check writes nothing
    assert report.main(["--docs", str(docs), "results"]) == 0
    assert (docs / "results.md").read_text() == f"# P\n\n{report.block('results')}\n\nafter\n"
    assert report.main(["--docs", str(docs)]) == 0
    assert report.main(["--docs", str(docs), "--check"]) == 0
    for name in report.BLOCKS:
        assert report.written_block(name, docs) == report.block(name)
    (docs / "lm.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="lm-table"):
        report.main(["--docs", str(docs), "lm"])
    capsys.readouterr()
    for name in ("peers-table", "evidence", "results"):
        for target in re.findall(r"\]\(([^)#\s]+)", report.block(name)):
            assert (repo / "docs" / target).resolve().is_file(), target
    readme = (repo / "README.md").read_text()
    assert not any(f"<!-- {name}:start" in readme for name in report.BLOCKS)


def test_device_check_refuses_without_a_gpu_and_times_a_decoding_round(monkeypatch, tmp_path):
    """benchmarks/device_check.py (for a session lent a GPU): without CUDA it says so in one line and writes
    nothing; its decoding part times a round on a random model of SmolLM2's shape (cut to 2 layers here)."""
    import torch

    check = benchmark_script("device_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        check.main(["--results", str(tmp_path)])
    assert not list(tmp_path.iterdir())
    out = check.decode_costs("cpu", layers=2, exit_layer=1, repeats=2)
    assert set(out["settings"]) == {"full head", "draft vocabulary 4096"}
    for c in out["settings"].values():
        assert len(c["verify"]) == 8 and c["step_ms"] > 0 and 0 < c["break_even_agreement"] <= 1


def test_the_adapter_recipe_trains_what_bench_smollm_measured():
    """recipes/lm_pretrained_adapter.yaml (what users run) has bench_smollm's adapter settings (what was measured:
    layer 8, rank, lr, warmup), with train_exit_adapter's AdamW (betas, no weight decay, constant LR after warmup)."""
    import inspect

    import yaml

    from stimulative.lm.adapter import ExitAdapter, adapter_optimizer, train_exit_adapter

    smollm = benchmark_script("bench_smollm")
    recipe = yaml.safe_load((smollm.REPO / "recipes" / "lm_pretrained_adapter.yaml").read_text())
    o = recipe["optim"]
    assert (recipe["adapter"]["layer"], recipe["adapter"]["rank"], o["lr"], o["warmup_steps"]) == \
        (8, smollm.ADAPTER["rank"], smollm.ADAPTER["lr"], smollm.ADAPTER["warmup_steps"])
    group = adapter_optimizer(ExitAdapter(8, 1, rank=2), o["lr"]).param_groups[0]
    assert (o["name"], tuple(o["betas"]), o["weight_decay"]) == ("adamw", group["betas"], group["weight_decay"])
    assert (o["schedule"], o["min_lr"], recipe["st"]["num_subnets"]) == ("constant", o["lr"], 0)
    assert o["clip_grad"] == inspect.signature(train_exit_adapter).parameters["clip_grad"].default


def test_peers_status_shows_landed_training_and_the_cpu_hours_left(tmp_path, monkeypatch):
    """``--status``: a landed record shows its accuracy, a run dir its epochs so far, a run never started ``-``; the
    hours left come from the variant's landed CPU time per epoch, else from the setting's calibration."""
    bench = benchmark_script("bench_peers")
    results, runs = tmp_path / "results", tmp_path / "runs"
    monkeypatch.setattr(bench, "RESULTS", results)
    results.mkdir()
    per_image = {"ST++ frac50": 0.01, "CT": 0.005, "SDb05": 0.004}
    (results / "calibration_r20_full.json").write_text(json.dumps({"s_per_image": per_image}))
    record = {"variant": "stpp_frac50", "epochs": 15, "test_acc": 84.171, "train_cpu_s": 15 * 360.0}
    (results / "peers_r20_full_stpp_frac50_s10.json").write_text(json.dumps(record))
    (runs / "peers_r20_full_stpp_frac50_s11").mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 1.0} for e in (1, 2, 3)]
    (runs / "peers_r20_full_stpp_frac50_s11" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines, hours, left = bench.plan_status("r20_full", ["stpp_frac50", "sdb05_time"], [10, 11], runs)
    sdb_epochs = round(15 * 0.01 / 0.004)  # the calibrated equal-time epochs: 38
    assert lines[2] == "| stpp_frac50 | 84.17 | 3/15 ep |"
    assert lines[3] == "| sdb05_time | - | - |"
    assert left == 3
    # 12 epochs left at the landed 360 s/epoch, two runs of 38 epochs at 0.004 s/image x 50,000 images
    assert hours == pytest.approx((12 * 360 + 2 * sdb_epochs * 0.004 * 50000) / 3600)


def test_peers_deciding_peer_has_the_best_mean_front_and_needs_every_seed(tmp_path, monkeypatch):
    """``--deciding-peer`` (long_runs.sh's choice of the peer that gets seeds 13-14 with the cheaper ST++): the best
    mean front area over the seeds, not the best single seed; a missing record stops it with the record's name."""
    bench = benchmark_script("bench_peers")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    cost = {"1,1,1": 10.0, "3,3,3": 100.0}  # a two-point front's area is its cheap point's accuracy
    fronts = {"sdb05_time": (80.0, 70.0), "sdb01_time": (60.0, 61.0), "ldb02_time": (76.0, 76.0)}
    for v, per_seed in fronts.items():
        for seed, front in zip((10, 11), per_seed):
            rec = {"variant": v, "depth_acc": {"1,1,1": front, "3,3,3": 90.0}, "depth_mflops": cost}
            (tmp_path / f"{bench.run_name('r20_full', v, seed)}.json").write_text(json.dumps(rec))
    assert bench.deciding_peer("r20_full", [10, 11]) == "ldb02_time"  # mean 76 against 75 (best at seed 10)
    assert bench.deciding_peer("r20_full", [10]) == "sdb05_time"
    with pytest.raises(SystemExit, match="peers_r20_full_sdb01_time_s12.json"):
        bench.deciding_peer("r20_full", [10, 11, 12])


def test_long_runs_script_parses_and_refuses_a_missing_data_path(tmp_path):
    """long_runs.sh is valid bash (``bash -n``) and stops with its usage line, exit 2, when the data path is missing
    (before it starts any lane)."""
    import subprocess

    script = BENCHMARKS / "long_runs.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    run = subprocess.run(["bash", str(script), str(tmp_path / "nope.tar.xz")], capture_output=True, text=True)
    assert run.returncode == 2 and "usage: long_runs.sh" in run.stderr
