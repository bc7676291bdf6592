"""stimulative.lm.train: train_lm writes the run directory, resumes to the same weights, recipes and config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from stimulative.io import read_jsonl  # noqa: E402
from stimulative.lm.config import ConfigError, is_lm_recipe, load_lm_config  # noqa: E402
from stimulative.lm.model import load_lm  # noqa: E402
from stimulative.lm.train import load_lm_data, train_lm  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

TINY = ["model.num_hidden_layers=3", "model.hidden_size=16", "model.intermediate_size=32",
        "model.num_attention_heads=2", "model.num_key_value_heads=0", "model.context=16", "batch_size=4", "eval_batch_size=8", "data.val_blocks=6",
        "optim.warmup_steps=1", "log_every=1000", "threads=1", "device=cpu", "eval_depths=[1,2]"]


def text_folder(root: Path, files: int = 6) -> Path:
    """A small folder of text files (split into train/val by file)."""
    rng = random.Random(0)
    words = ["def", "return", "self", "x", "=", "(", ")", ":", "for", "in", "if", "else", "print", "value", "1"]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(40)]
        (root / f"f{i}.txt").write_text("\n".join(lines) + "\n")
    return root


def _args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [f"data.root={text_folder(tmp_path / 'text')}", f"out_dir={tmp_path / 'runs'}", f"name={name}", *TINY,
            *extra]


def test_train_lm_writes_the_run_dir(tmp_path):
    summary = train_lm(REPO / "recipes/lm_llama_st.yaml", _args(tmp_path, "st", "steps=6", "eval_every=3"))
    run = Path(summary["run_dir"])
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "metrics.csv", "last.pt"}
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [3, 6]  # one record per validation
    for key in ("val_loss", "val_ppl", "val_loss_d1", "val_loss_d2", "train_loss_main", "train_loss_subnet",
                "wall_s", "tokens_per_s"):
        assert all(isinstance(r[key], float) for r in records), key
    assert records[-1]["train_loss_subnet"] > 0  # ST: one sub-network per step
    assert summary["final"] == records[-1] and summary["step"] == summary["steps"] == 6
    # config.yaml is the resolved config and reloads; the run loads back with its trained weights
    cfg = load_lm_config(run / "config.yaml")
    assert cfg.st.num_subnets == 1 and cfg.model.num_hidden_layers == 3 and cfg.steps == 6
    lm = load_lm(run)
    assert lm.model.config.num_hidden_layers == 3 and not lm.model.training
    # re-running a finished run with resume=auto trains nothing and returns the same final record
    again = train_lm(REPO / "recipes/lm_llama_st.yaml", _args(tmp_path, "st", "steps=6", "eval_every=3", "resume=auto"))
    assert again["final"] == summary["final"]


def test_st_on_given_exits_trains_those_exits_only(tmp_path, monkeypatch):
    """st.sampling=choices with st.depths=[1]: every sub-network of every step is exit 1 (the exit a draft reads)."""
    from stimulative.core.sampling import SampleSpace

    drawn = []
    real = SampleSpace.sample
    monkeypatch.setattr(SampleSpace, "sample", lambda self: drawn.append(real(self)) or drawn[-1])
    summary = train_lm(REPO / "recipes/lm_llama_st.yaml",
                       _args(tmp_path, "one_exit", "steps=3", "eval_every=3", "st.num_subnets=2",
                             "st.sampling=choices", "st.depths=[1]"))
    assert drawn == [[1]] * 6 and summary["final"]["train_loss_subnet"] > 0
    assert load_lm_config(Path(summary["run_dir"]) / "config.yaml").st.depths == [1]
    with pytest.raises(ConfigError, match="st.depths"):
        load_lm_config(None, ["st.sampling=choices"])
    with pytest.raises(ConfigError, match="st.depths"):
        load_lm_config(None, ["st.depths=[1]"])
    with pytest.raises(ValueError, match="outside"):
        train_lm(REPO / "recipes/lm_llama_st.yaml", _args(tmp_path, "bad", "steps=1", "st.num_subnets=1",
                                                          "st.sampling=choices", "st.depths=[4]"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    recipe = REPO / "recipes/lm_llama_st.yaml"
    full = train_lm(recipe, _args(tmp_path, "full", "steps=6", "eval_every=4"))
    part = train_lm(recipe, _args(tmp_path, "part", "steps=6", "eval_every=4", "max_steps=3"))
    assert part["step"] == 3
    resumed = train_lm(recipe, _args(tmp_path, "part", "steps=6", "eval_every=4", "resume=auto"))
    a, b = _same_run(full, resumed)
    assert a["space_rng"] == b["space_rng"]  # the same sub-networks were drawn
    assert len(a["starts"]) == 1 and len(b["starts"]) == 2  # provenance: one record per start of the run


def _same_run(full: dict, resumed: dict) -> tuple[dict, dict]:
    """Assert that a resumed run ended where the uninterrupted one did (step, weights, validation loss); returns
    both checkpoints."""
    assert resumed["step"] == full["step"]
    a = torch.load(Path(full["checkpoint"]), weights_only=True)
    b = torch.load(Path(resumed["checkpoint"]), weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert resumed["final"]["val_loss"] == full["final"]["val_loss"]
    return a, b


def test_gpt2_family_and_single_file_root(tmp_path):
    text = text_folder(tmp_path / "t") / "f0.txt"
    summary = train_lm(None, [f"data.root={text}", f"out_dir={tmp_path}", "name=g", *TINY, "model.family=gpt2",
                              "steps=2", "st.num_subnets=1", "st.kl_norm=layer", "st.amplitude=adaptive"])
    assert summary["final"]["val_loss"] > 0 and load_lm(summary["run_dir"]).model.config.model_type == "gpt2"


def test_batches_depend_on_seed_and_step_only(tmp_path):
    cfg = load_lm_config(None, _args(tmp_path, "x"))
    data = load_lm_data(cfg)
    a, b = data.train_batch(5, 4, seed=0), data.train_batch(5, 4, seed=0)
    assert torch.equal(a, b) and a.shape == (4, 17) and a.dtype == torch.int64
    assert not torch.equal(a, data.train_batch(6, 4, seed=0))
    val = data.val_batches(5, batch_size=2)
    assert [len(v) for v in val] == [2, 2, 1] and val[0].shape[1] == 17


def test_recipes_and_config_errors(tmp_path):
    for name in ("ct", "st", "stpp"):
        path = REPO / f"recipes/lm_llama_{name}.yaml"
        assert is_lm_recipe(path)
        cfg = load_lm_config(path)
        assert cfg.model.family == "llama" and cfg.model.num_hidden_layers == 8 and cfg.eval_depths == [2, 4, 6]
    assert load_lm_config(REPO / "recipes/lm_llama_ct.yaml").st.num_subnets == 0
    assert load_lm_config(REPO / "recipes/lm_llama_stpp.yaml").st.kl_norm == "layer"
    assert not is_lm_recipe(REPO / "recipes/cifar10_resnet20_st.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'model.width'"):
        load_lm_config(None, ["model.width=3"])
    with pytest.raises(ConfigError, match="model.family"):
        load_lm_config(None, ["model.family=bert"])
    with pytest.raises(ConfigError, match="min_input_scale"):
        load_lm_config(None, ["st.min_input_scale=0.5"])
    assert load_lm_config(None, ["optim.lr=1e-3"]).optim.lr == 1e-3
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"task": "lm", "steps": "many"}))
    with pytest.raises(ConfigError, match="'steps'"):
        load_lm_config(bad)


def test_save_every_checkpoints_between_validations_and_resumes_exactly(tmp_path, monkeypatch):
    """save_every writes the checkpoint between validations (steps 2 and 4 of 6 here, validating at 6 only), and a
    run stopped right after one of those saves resumes to the same weights as an uninterrupted run."""
    import stimulative.lm.train as lm_train

    recipe = REPO / "recipes/lm_llama_st.yaml"
    full = train_lm(recipe, _args(tmp_path, "full", "steps=6", "eval_every=6"))
    saved_at, real_save = [], lm_train.save_checkpoint

    def save_then_stop(ckpt, path):
        real_save(ckpt, path)
        saved_at.append(ckpt["step"])
        if len(saved_at) == 2:  # the machine stops right after the save at step 4
            raise KeyboardInterrupt

    monkeypatch.setattr(lm_train, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_lm(recipe, _args(tmp_path, "part", "steps=6", "eval_every=6", "save_every=2"))
    assert saved_at == [2, 4]
    monkeypatch.setattr(lm_train, "save_checkpoint", real_save)
    _same_run(full, train_lm(recipe, _args(tmp_path, "part", "steps=6", "eval_every=6", "resume=auto")))
    with pytest.raises(ValueError, match="save_every"):
        train_lm(recipe, _args(tmp_path, "bad", "steps=2", "save_every=-1"))


def test_a_checkpoint_between_validations_is_never_of_non_finite_weights(tmp_path, monkeypatch):
    """The weights are checked before a save_every checkpoint as before a validation's: non-finite weights at
    step 2 stop the run there, naming the step, and write no checkpoint."""
    import stimulative.train.steps as steps
    from stimulative.core.step import NonFiniteLossError

    monkeypatch.setattr(steps, "all_finite", lambda model: False)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train_lm(REPO / "recipes/lm_llama_st.yaml",
                 _args(tmp_path, "nan", "steps=6", "eval_every=6", "save_every=2", "log_every=100"))
    assert not (tmp_path / "runs" / "nan" / "last.pt").exists()
