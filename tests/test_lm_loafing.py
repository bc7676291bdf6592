"""stimulative.lm loafing / export on tiny trained runs: table values = depth_losses, export -> from_pretrained =
the depth-k sub-network; the LM commands of ``stimulative`` (the decoding benchmark's test is
benchmarks/tests/test_lm_decode.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_lm_train import TINY, text_folder  # noqa: E402

from stimulative import hf as st_hf  # noqa: E402
from stimulative.lm import depth_losses  # noqa: E402
from stimulative.lm.export import export_lm  # noqa: E402
from stimulative.lm.loafing import lm_loafing  # noqa: E402
from stimulative.lm.model import load_lm  # noqa: E402
from stimulative.lm.train import load_lm_data, train_lm  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-layer ST run, a 3-layer CT run and a 2-layer run trained alone (a few steps each)."""
    tmp = tmp_path_factory.mktemp("lm")
    common = [f"data.root={text_folder(tmp / 'text')}", f"out_dir={tmp / 'runs'}", *TINY, "steps=4", "eval_every=4"]
    st = train_lm(REPO / "recipes/lm_llama_st.yaml", [*common, "name=st"])["run_dir"]
    ct = train_lm(REPO / "recipes/lm_llama_ct.yaml", [*common, "name=ct"])["run_dir"]
    alone = train_lm(REPO / "recipes/lm_llama_ct.yaml", [*common, "name=d2", "model.num_hidden_layers=2"])["run_dir"]
    return {"st": st, "ct": ct, "alone": alone, "tmp": tmp}


def test_loafing_table_equals_depth_losses(runs, tmp_path):
    result = lm_loafing({"CT": runs["ct"], "ST": runs["st"]}, alone=[runs["alone"]], out_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"loafing_lm.json", "loafing_lm.csv", "loafing_lm.png"}
    lm = load_lm(runs["st"])
    batches = load_lm_data(lm.config, train=False).val_batches(lm.config.data.val_blocks, lm.config.eval_batch_size)
    direct = {}
    for label in ("CT", "ST"):
        model = load_lm(runs[label.lower()]).model
        direct[label] = depth_losses(st_hf.elastic_depth(model), batches)
    alone_loss = depth_losses(st_hf.elastic_depth(load_lm(runs["alone"]).model), batches)[2]["loss"]
    assert sorted((r["run"], r["depth"]) for r in result["rows"]) == [(m, k) for m in ("CT", "ST") for k in (1, 2, 3)]
    for row in result["rows"]:
        assert row["loss"] == pytest.approx(direct[row["run"]][row["depth"]]["loss"], rel=1e-6)
        assert row["tokens"] == direct[row["run"]][row["depth"]]["tokens"]
        assert row["method"] == row["run"]
    assert result["alone"][2]["loss"] == pytest.approx(alone_loss, rel=1e-6)
    row = next(r for r in result["rows"] if r["run"] == "ST" and r["depth"] == 2)
    assert row["rel_to_alone"] == pytest.approx(row["loss"] / alone_loss - 1)
    # the full-depth loss is the one train_lm logged at the end (same validation blocks)
    final = json.loads((Path(runs["st"]) / "metrics.jsonl").read_text().splitlines()[-1])
    assert direct["ST"][3]["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert json.loads((tmp_path / "loafing_lm.json").read_text())["rows"][0]["loss"] == result["rows"][0]["loss"]


def test_export_loads_with_from_pretrained_and_equals_the_sub_network(runs, tmp_path):
    info = export_lm(runs["st"], 2, tmp_path / "d2", evaluate=True)
    assert info["num_hidden_layers"] == 2 and (tmp_path / "d2" / "stimulative_lm.json").is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "d2").eval()
    assert hf.config.num_hidden_layers == 2 and len(hf.model.layers) == 2
    lm = load_lm(runs["st"])
    ed = st_hf.elastic_depth(lm.model)
    ids = load_lm_data(lm.config, train=False).val_batches(4, 4)[0]
    with torch.no_grad(), ed.depth([2]):
        expected = ed.model(ids)
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, expected, atol=1e-5)
    # its validation loss is the depth-2 loss inside the run
    batches = load_lm_data(lm.config, train=False).val_batches(lm.config.data.val_blocks, lm.config.eval_batch_size)
    assert info["val_loss"] == pytest.approx(depth_losses(ed, batches, [2])[2]["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="depth"):
        export_lm(runs["st"], 4, tmp_path / "bad")


def test_command_line(runs, tmp_path, capsys):
    from stimulative.cli import main
    from stimulative.lm.config import is_lm_recipe, is_lm_run

    assert is_lm_run(runs["st"]) and is_lm_run(Path(runs["st"]) / "last.pt") and not is_lm_run(tmp_path)
    assert is_lm_recipe(REPO / "recipes/lm_llama_ct.yaml")
    assert main(["loafing", runs["ct"], runs["st"], "--alone", runs["alone"], "--out", str(tmp_path / "l")]) == 0
    assert "vs alone" in capsys.readouterr().out and (tmp_path / "l" / "loafing_lm.png").is_file()
    assert main(["export", runs["ct"], "--depth", "1", "-o", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["num_hidden_layers"] == 1
    args = [f"data.root={runs['tmp'] / 'text'}", f"out_dir={tmp_path}", "name=c", *TINY, "steps=1"]
    assert main(["train", str(REPO / "recipes/lm_llama_ct.yaml"), *args]) == 0
    assert "finished step 1/1" in capsys.readouterr().out and is_lm_run(tmp_path / "c")


def test_open_run_opens_an_lm_run_like_any_other(runs):
    import stimulative as st

    run = st.open_run(runs["st"], ["data.val_blocks=2"])
    assert run.is_lm and not run.exported and run.tokenizer is not None
    assert type(run.model).__name__ == "LlamaForCausalLM" and not run.model.training
    assert run.model.config.num_hidden_layers == 3 and run.ed.full_depths == [3]
    assert run.config.data.val_blocks == 2 and run.name == "st"
    ref = load_lm(runs["st"])
    for key, value in ref.model.state_dict().items():
        assert torch.equal(value, run.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="no EMA weights"):
        st.open_run(runs["st"], use_ema=True)
