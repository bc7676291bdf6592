"""`stimulative train / loafing / export` dispatch `task: lm` recipes and LM run directories to stimulative.lm."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from test_lm_train import REPO, TINY, text_folder  # noqa: E402

from stimulative.cli import main  # noqa: E402


def test_stimulative_commands_run_language_models(tmp_path, capsys):
    text = text_folder(tmp_path / "text")
    base = [f"data.root={text}", f"out_dir={tmp_path / 'runs'}", *TINY, "steps=4", "eval_every=4"]
    assert main(["train", str(REPO / "recipes/lm_llama_st.yaml"), "name=st", *base]) == 0
    assert main(["train", str(REPO / "recipes/lm_llama_ct.yaml"), "name=ct", *base]) == 0
    run = tmp_path / "runs" / "st"
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    out = tmp_path / "loafing"
    assert main(["loafing", str(run), str(tmp_path / "runs" / "ct"), "--out", str(out)]) == 0
    rows = json.loads((out / "loafing_lm.json").read_text())["rows"]
    assert {r["depth"] for r in rows} == {1, 2, 3}
    assert main(["export", str(run), "--depth", "2", "-o", str(tmp_path / "st-2")]) == 0
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "st-2")
    assert model.config.num_hidden_layers == 2
    assert "val loss" in capsys.readouterr().out
