"""The README and the docs pages it links to: the examples run as written, the generated tables are what their
generators build from the records (in docs/, never in the README), and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from conftest import benchmark_script

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"


def test_readme_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    ed, small, losses, x = scope["ed"], scope["small"], scope["losses"], scope["x"]
    assert ed.full_depths == [9, 9, 9]
    model = scope["model"].eval()
    # `small` was extracted before optimizer.step(): a copy, so the step changed the model but not it
    assert not torch.equal(small.fc.weight, model.fc.weight)
    with torch.no_grad(), ed.depth([3, 3, 3]):
        assert torch.allclose(ed.extract([3, 3, 3]).eval()(x), model(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in scope["model"].parameters())
    assert set(losses) >= {"loss", "main", "subnet"} and losses["subnet"] > 0


def _section(heading: str) -> str:
    return README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_integration_example_is_the_lightning_page_example():
    # the README shows one integration, word for word the first example of its page, which
    # tests/test_integration_readme_snippets.py runs (as it runs the Accelerate and transformers pages' examples)
    section = _section("Use it in your trainer")
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README shows one integration snippet; the others are on their pages"
    page = re.findall(r"```python\n(.*?)```", (DOCS / "integrations" / "lightning.md").read_text(), re.S)[0]
    assert blocks[0] == page
    for linked in ("docs/integrations/lightning.md", "docs/integrations/accelerate.md",
                   "docs/integrations/transformers.md", "docs/lm.md"):
        assert f"]({linked})" in section, linked


def test_readme_is_short_and_links_every_moved_section():
    text = README.read_text()
    assert len(text.encode()) <= 12_000, f"README.md is {len(text.encode()):,} bytes; move detail to docs/"
    assert "<!--" not in text, "generated blocks belong in docs pages, not in the README"
    # what CI (.ci/run) runs is what the README says to run
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in _section("Install") and 'pip install -e ".[dev]"' in ci
    assert "python -m pytest" in _section("Tests and documentation") and "python -m pytest" in ci
    assert "mkdocs serve" in _section("Tests and documentation")
    # the sections that moved out of the README, one link away
    links = set(re.findall(r"\]\((docs/[^)#]+)", text))
    for page in ("method.md", "training.md", "python-api.md", "analyses.md", "deploy.md", "reliability.md",
                 "lm.md", "peers.md", "results.md", "evidence.md", "development.md", "architecture.md"):
        assert f"docs/{page}" in links, page
    for page in links:
        assert (REPO / page).is_file(), page
    assert "](docs/peers.md#when-does-st-help)" in text


def test_docs_results_and_evidence_match_benchmark_json():
    # docs/results.md's results block and docs/peers.md's "When does ST++ help?" block are exactly what
    # benchmarks/make_table.py builds from benchmarks/results/
    make_table = benchmark_script("make_table")
    assert make_table.RESULTS_DOC == DOCS / "results.md" and make_table.EVIDENCE_DOC == DOCS / "peers.md"
    text = make_table.RESULTS_DOC.read_text()
    start, end = text.index(make_table.START), text.index(make_table.END) + len(make_table.END)
    assert text[start:end] == make_table.build(), "docs/results.md is stale: run python benchmarks/make_table.py"
    text = make_table.EVIDENCE_DOC.read_text()
    start, end = text.index(make_table.EV_START), text.index(make_table.EV_END) + len(make_table.EV_END)
    assert text[start:end] == make_table.build_evidence(), \
        "docs/peers.md 'When does ST++ help?' is stale: run python benchmarks/make_table.py"


def test_lm_doc_tables_match_lm_results():
    # the language-model tables of docs/lm.md are what benchmarks/make_lm_table.py builds
    make_lm_table = benchmark_script("make_lm_table")
    expected = make_lm_table.markdown(REPO / "benchmarks" / "results" / "lm")
    text = (DOCS / "lm.md").read_text()
    start = text.index(make_lm_table.START) + len(make_lm_table.START) + 1
    assert text[start:text.index(make_lm_table.END)] == expected, "lm.md: run make_lm_table.py --write docs/lm.md"


def test_lm_doc_decode_and_step_cost_tables_match_lm_results():
    # docs/lm.md's decoding table (decode_reuse_*.json) and step-cost table (step_cost.json) are what
    # benchmarks/make_lm_table.py builds
    make_lm_table = benchmark_script("make_lm_table")
    results = REPO / "benchmarks" / "results" / "lm"
    text = (DOCS / "lm.md").read_text()
    for start_marker, end_marker, build in ((make_lm_table.DEC_START, make_lm_table.DEC_END,
                                             make_lm_table.decode_reuse_markdown),
                                            (make_lm_table.STEP_START, make_lm_table.STEP_END,
                                             make_lm_table.step_cost_markdown),
                                            (make_lm_table.BUDGET_START, make_lm_table.BUDGET_END,
                                             lambda _: make_lm_table.budget_markdown(make_lm_table.BUDGET))):
        start = text.index(start_marker) + len(start_marker) + 1
        assert text[start:text.index(end_marker)] == build(results), \
            "lm.md: run python benchmarks/make_lm_table.py --write docs/lm.md"
    # every decode_reuse record is rendered, a proxy (random-init) model with its label and outside the aims;
    # decode_profile.json (bench_decode.py --profile) gives the profile table and the overhead/arithmetic verdict
    import json

    block = make_lm_table.decode_reuse_markdown(results)
    aims = block[block.index("Aims (issue 21):"):]
    aims = aims[:aims.index("\n\n", aims.index("- "))]
    for path in results.glob("decode_reuse_*.json"):
        record = json.loads(path.read_text())
        assert path.name in block or path.name[len("decode_reuse_"):-len(".json")] in block
        assert "proxy" not in record or make_lm_table.PROXY_LABEL in block
        assert "proxy" not in record or make_lm_table._label(path.stem[len("decode_reuse_"):], record) not in aims
    if (results / "decode_profile.json").exists():
        profile = json.loads((results / "decode_profile.json").read_text())
        assert "decode_profile.json" in block and profile["command"] in block
        f_ratio, t_ratio, share, _ = make_lm_table._bound(profile)
        verdict = "overhead-bound" if share < make_lm_table.ARITHMETIC_BOUND else "arithmetic-bound"
        assert f"is {verdict}.**" in block and f"{t_ratio:.2f}x the time" in block


def test_lm_budget_block_aggregates_seeds_and_judges_the_aims(tmp_path):
    """The long-budget block: mean ± std over seed folders, and each aim judged from the paired seeds."""
    import json

    make_lm_table = benchmark_script("make_lm_table")

    def run(loss, d2, d4, d6=None, layers=None, steps=8000):
        r = {"steps": steps, "val_loss": loss, "val_loss_d2": d2, "train_time_s": 100.0, "layers": layers}
        return r | ({"val_loss_d4": d4, "val_loss_d6": d6} if layers is None else {})

    def decode(speedup_2, speedup_4):
        return {f"ours_exit_{k}": {"acceptance": 0.8, "tokens_per_full_forward": 3.0, "speedup": v,
                                   "equal_greedy": True} for k, v in ((2, speedup_2), (4, speedup_4))}

    for seed, shift in ((0, 0.0), (1, 0.01)):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        records = {"ct": run(1.00 + shift, 3.0, 2.5, 1.8), "d4_alone": run(1.05 + shift, 2.0, None, layers=4),
                   "st": run(1.005 + shift, 1.5, 1.08 + shift, 1.02), "stpp": run(1.02 + shift, 1.4, 1.20, 1.03),
                   "layerskip": run(1.01 + shift, 1.6, 1.10, 1.01)}
        for key, record in records.items():
            (folder / f"{key}.json").write_text(json.dumps(record))
        (folder / "decode_reuse_st.json").write_text(json.dumps(decode(1.9, 1.6)))
        (folder / "decode_reuse_layerskip.json").write_text(json.dumps(decode(1.5, 1.7)))
    (tmp_path / "s0" / "layerskip_time.json").write_text(json.dumps(run(1.0, 1.45, 1.15, 1.0, steps=8760)))
    (tmp_path / "s0_old").mkdir()  # not a seed folder
    (tmp_path / "s0_old" / "ct.json").write_text("{}")
    block = make_lm_table.budget_markdown(tmp_path)
    assert "| CT | 0,1 | 8,000 | 3.0000 ± 0.0000 | 2.5000 ± 0.0000 | 1.8000 ± 0.0000 | 1.0050 ± 0.0071 |" in block
    aims = {line.split("**")[1]: line for line in block.splitlines() if line.startswith("- **")}
    assert aims["Premise, CT's full model clearly better than depth 4 alone"].endswith(
        "-4.74 ± 0.03% (per seed -4.76, -4.72) over 2 seeds: met on every seed.")
    assert aims["ST's depth-4 prefix within 5% of depth 4 alone"].endswith(": met on every seed.")  # +2.9%
    assert aims["ST++'s depth-4 prefix within 5% of depth 4 alone"].endswith("not met on any seed.")  # +13.8%
    assert aims["ST's full model within 1% of CT's"].endswith(": met on every seed.")  # +0.5%
    assert aims["ST++'s full model within 1% of CT's"].endswith("not met on any seed.")  # +2%
    assert aims["ST ahead of LayerSkip on the prefix losses"].endswith("not met on any seed.")  # depth 6 behind
    # ST++ (dearer than LayerSkip per step) meets LayerSkip given its time; ST (cheaper) LayerSkip at equal steps
    # ST++ vs LayerSkip at ST++'s time (seed 0 only): depth 2 ahead (1.40 vs 1.45), depth 4 behind (1.20 vs 1.15)
    assert "depth 2 -3.45%" in aims["ST++ ahead of LayerSkip, ST++'s time on the prefix losses"]
    assert aims["ST++ ahead of LayerSkip, ST++'s time on the prefix losses"].endswith("not met.")
    assert aims["ST ahead of LayerSkip on the decoding speed-up"].endswith("not met on any seed.")  # exit 4 behind
    assert "1.90x vs 1.50x" in aims["ST ahead of LayerSkip on the decoding speed-up"].replace(" ± 0.00", "")
    # the depth-4 gaps along training come from the histories, paired by seed and step
    def hist(*rows):
        return [dict(zip(("step", "val_loss", "val_loss_d4"), r)) for r in rows]

    runs = {"st": {0: {"history": hist((1000, 1.5, 1.2), (2000, 1.3, 1.1))}, 1: {"history": hist((1000, 1.5, 1.32))}},
            "d4_alone": {0: {"layers": 4, "history": hist((1000, 1.0), (2000, 1.0))},
                         1: {"layers": 4, "history": hist((1000, 1.2))}}}
    gap = make_lm_table.gap_over_training(runs)
    assert "| step 1,000 | step 2,000 |" in gap[2]
    assert gap[4] == "| ST depth-4 prefix | +15.00 ± 7.07% | +10.00% |"  # (20%, 10%) at 1,000; seed 0 alone at 2,000
    # one record alone judges nothing, and says so instead of an empty list
    (lone := tmp_path / "lone" / "s0").mkdir(parents=True)
    (lone / "stpp.json").write_text(json.dumps(records["stpp"]))
    assert "- none can be judged yet" in make_lm_table.budget_markdown(lone.parent)
    # without LayerSkip at ST++'s time, ST++ against LayerSkip at equal steps is shown but judges no aim
    (lone / "layerskip.json").write_text(json.dumps(records["layerskip"]))
    block = make_lm_table.budget_markdown(lone.parent)
    assert "- ST++ against LayerSkip at equal steps (not yet the aim" in block and "**ST++ ahead of" not in block


def test_lm_budget_aims_say_when_the_seeds_disagree(tmp_path):
    """With two seeds an aim met by the mean but missed on one seed says so, and every aim lists each seed's value."""
    import json

    make_lm_table = benchmark_script("make_lm_table")
    assert make_lm_table._judge([True], True) == "met" and make_lm_table._judge([False], False) == "not met"
    assert make_lm_table._judge([True, False], True) == "met by the mean, on 1 of 2 seeds"
    assert make_lm_table._judge([True, False], False) == "not met (on 1 of 2 seeds)"
    # seed 0: ST's full model 0.5% above CT's (within 1%), seed 1: 1.2% above (not); mean 0.85%: met by the mean
    for seed, st_loss in ((0, 1.005), (1, 1.012)):
        (folder := tmp_path / f"s{seed}").mkdir()
        for key, loss in (("ct", 1.0), ("st", st_loss)):
            record = {"steps": 8000, "val_loss": loss, "val_loss_d2": 2.0, "val_loss_d4": 1.5, "train_time_s": 1.0}
            (folder / f"{key}.json").write_text(json.dumps(record))
    aims = [line for line in make_lm_table.budget_aims(*make_lm_table.load_budget(tmp_path)) if "within 1%" in line]
    assert aims == ["- **ST's full model within 1% of CT's** (equal steps): +0.85 ± 0.49% (per seed +0.50, +1.20): "
                    "met by the mean, on 1 of 2 seeds."]


def test_lm_budget_block_shows_the_separate_draft_model(tmp_path):
    """A ``decode_reuse_ct_draft_d4.json`` record (bench_decode.py --draft-model) is a row of the decoding table
    and a line set against the self-speculative speed-ups, transformers' and ours, per exit."""
    import json

    make_lm_table = benchmark_script("make_lm_table")
    (folder := tmp_path / "s0").mkdir()
    entry = {"acceptance": 0.5, "tokens_per_full_forward": 2.0, "equal_greedy": True}
    (folder / "ct.json").write_text(json.dumps({"steps": 8000, "val_loss": 1.0, "val_loss_d2": 3.0,
                                                "train_time_s": 1.0}))
    (folder / "decode_reuse_ct_draft_d4.json").write_text(json.dumps(
        {"hf_draft": entry | {"draft_layers": 4, "speedup": 1.5}}))
    (folder / "decode_reuse_st.json").write_text(json.dumps(
        {f"{kind}_exit_{k}": entry | {"speedup": speed} for kind, k, speed in
         (("hf", 2, 1.2), ("hf", 4, 1.1), ("ours", 2, 2.1), ("ours", 4, 1.8))}))
    block = make_lm_table.budget_markdown(tmp_path)
    assert "| CT, depth-4 alone drafting | draft model (4 layers) | 50.0% | 2.00 | 1.50x | yes |" in block
    line = next(x for x in block.splitlines() if x.startswith("- Against a separately trained draft model"))
    assert "drafting 1.50x" in line and "(`assistant_early_exit`): ST exit 2 1.20x; ST exit 4 1.10x;" in line
    assert line.endswith("`stimulative.lm.generate`: ST exit 2 2.10x; ST exit 4 1.80x.")


def test_docs_peers_section_matches_its_records():
    # docs/peers.md's "Which method for which goal?" is exactly what benchmarks/make_peers_table.py builds from
    # benchmarks/results/peers/
    make_peers_table = benchmark_script("make_peers_table")
    text = (DOCS / "peers.md").read_text()
    start, end = text.index(make_peers_table.START), text.index(make_peers_table.END) + len(make_peers_table.END)
    assert text[start:end] == make_peers_table.build(), \
        "docs/peers.md is stale: run python benchmarks/make_peers_table.py --write docs/peers.md"


def test_readme_headline_numbers_are_on_their_pages():
    # each headline number of the README's table is stated on the page its row links to (to the README's
    # precision: 80.5 there for the paper's 80.50); spreads after "±" are the README's summary of the seeds
    rows = [line.split("|")[1:4] for line in README.read_text().splitlines()
            if line.startswith("| ") and "](docs/" in line and line.count("|") == 4]
    assert len(rows) >= 6
    number = r"(?<![\d.])\d+(?:\.\d+)?(?![\d])"
    for area, cell, links in rows:
        text = " ".join((REPO / page).read_text() for page in re.findall(r"\]\((docs/[^)#]+)", links))
        on_page = {float(x) for x in re.findall(number, text)}
        for value in re.findall(rf"(?<!± ){number}", re.sub(r"`[^`]*`", "", cell)):
            digits = len(value.split(".")[1]) if "." in value else 0
            assert any(round(x, digits) == float(value) for x in on_page), f"{area.strip()}: {value}"
