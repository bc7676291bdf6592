"""Renamed options: ``kl`` -> ``kl_norm`` (the KL- normalisation; ``loss`` is the divergence), and the
``StepOptions`` form of ``stimulative_step``. The old name keeps working, with a DeprecationWarning, for one
release: keyword arguments, recipes, overrides, config objects, and run directories written before the rename
(read, resumed and opened without a warning)."""

from __future__ import annotations

import random
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml

import stimulative as st
import stimulative.train.engine as engine
from stimulative.core.step import StepOptions
from stimulative.train.checkpoint import load_checkpoint, load_model
from stimulative.train.config import ConfigError, load_config

OPTIONS = dict(num_subnets=2, amplitude="adaptive", min_input_scale=0.5, normalize_main=True)


def _step(**options):
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet20", num_classes=10).double()
    ed = st.ElasticDepth(model)
    space = st.SampleSpace.for_model(ed, seed=1)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    options = dict(options)
    step_options = options.pop("options", None)
    losses = st.stimulative_step(ed, space, x, y, step_options, rng=random.Random(2), **options)
    return losses, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_options_dataclass_keywords_and_old_name_give_the_same_step():
    losses, grads = _step(kl_norm="layer", **OPTIONS)
    with pytest.warns(DeprecationWarning, match="'kl' is now 'kl_norm'"):
        old_losses, old_grads = _step(kl="layer", **OPTIONS)
    opt_losses, opt_grads = _step(options=StepOptions(kl_norm="layer", **OPTIONS))
    mixed_losses, mixed_grads = _step(options=StepOptions(kl_norm="layer"), **OPTIONS)  # keywords replace fields
    for other, other_grads in ((old_losses, old_grads), (opt_losses, opt_grads), (mixed_losses, mixed_grads)):
        assert other == losses
        assert all(torch.equal(a, b) for a, b in zip(grads, other_grads))
    plain, _ = _step(**OPTIONS)
    assert plain != losses  # kl_norm is applied (plain is the default)


def test_old_and_new_name_together_must_agree_and_unknown_options_are_named():
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="contradicts kl_norm='plain'"):
        _step(kl="layer", kl_norm="plain")
    with pytest.raises(TypeError, match="unknown option.*num_subnet\\b"):
        _step(num_subnet=2)
    with pytest.raises(ValueError, match="unknown kl_norm 'layernorm'; valid choices"):
        StepOptions(kl_norm="layernorm")


def test_stimulative_step_class_takes_the_old_keyword_and_attribute():
    ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
    space = st.SampleSpace.ordered(ed.full_depths, seed=0)
    with pytest.warns(DeprecationWarning, match="StimulativeStep: the option 'kl' is now 'kl_norm'"):
        step = st.StimulativeStep(ed, space, num_subnets=2, kl="layer")
    assert step.kl_norm == "layer" and step.options().kl_norm == "layer"
    with pytest.warns(DeprecationWarning, match="kl_norm"):
        assert step.kl == "layer"
    # a recipe section of an older release (an object with `kl`, no `kl_norm`)
    old = SimpleNamespace(num_subnets=3, sampling="ordered", ranges=None, kl="l2")
    with pytest.warns(DeprecationWarning):
        assert st.StimulativeStep.from_config(old, ed).kl_norm == "l2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert st.StimulativeStep.from_config(st.STConfig(kl_norm="layer"), ed).kl_norm == "layer"


def test_recipes_and_overrides_with_the_old_key(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"st": {"num_subnets": 2, "kl": "layer"}}))
    with pytest.warns(DeprecationWarning, match="'st.kl' is now 'st.kl_norm'"):
        cfg = load_config(recipe)
    assert cfg.st.kl_norm == "layer"
    with pytest.warns(DeprecationWarning, match="override 'st.kl' is now 'st.kl_norm'"):
        assert load_config(None, ["st.kl=l2"]).st.kl_norm == "l2"
    # an override under either name replaces the recipe's value under the other
    assert load_config(recipe, ["st.kl_norm=plain"]).st.kl_norm == "plain"
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"st": {"kl_norm": "layer"}}))
    with pytest.warns(DeprecationWarning):
        assert load_config(new, ["st.kl=plain"]).st.kl_norm == "plain"
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"st": {"kl": "layer", "kl_norm": "plain"}}))
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="'st.kl' .* and 'st.kl_norm'"):
        load_config(both)
    with pytest.warns(DeprecationWarning, match="STConfig.kl is now STConfig.kl_norm"):
        assert cfg.st.kl == "layer"


def test_shipped_recipes_use_the_new_key():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        st_section = (yaml.safe_load(path.read_text()) or {}).get("st") or {}
        assert "kl" not in st_section, path.name


def _make_old_run(tmp_path, name: str) -> tuple:
    """A run as a release before the rename wrote it: `st.kl` in config.yaml and in the checkpoints."""
    base = ["data.name=synthetic", "model.name=cifar_resnet_tiny", "data.input_size=16", "data.train_subset=64",
            "data.test_subset=32", "batch_size=32", "eval_batch_size=32", "threads=1", "device=cpu",
            f"out_dir={tmp_path}", f"name={name}", "optim.lr=0.05", "st.num_subnets=1", "st.kl_norm=layer"]
    engine.train(load_config(None, base + ["epochs=1"]))
    run = tmp_path / name
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["st"]["kl"] = raw["st"].pop("kl_norm")
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for file in ("last.pt", "best.pt"):
        if (run / file).is_file():
            ckpt = load_checkpoint(run / file)
            ckpt["config"]["st"]["kl"] = ckpt["config"]["st"].pop("kl_norm")
            torch.save(ckpt, run / file)
    return run, base


def test_run_written_before_the_rename_opens_and_resumes(tmp_path):
    run, base = _make_old_run(tmp_path, "old")
    assert "kl" in load_checkpoint(run / "last.pt")["config"]["st"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved run was right when it was written: no warning
        loaded = load_model(run)
        assert loaded.config.st.kl_norm == "layer"
    # resume from the run's own config.yaml (the old key: one warning) with more epochs
    with pytest.warns(DeprecationWarning, match="'st.kl' is now 'st.kl_norm'"):
        cfg = load_config(run / "config.yaml", ["resume=auto", "epochs=2"])
    engine.train(cfg)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    # and from the recipe with the new key: the checkpoint's old `st.kl` is the same setting
    run2, base2 = _make_old_run(tmp_path, "old2")
    engine.train(load_config(None, base2 + ["epochs=2", "resume=auto"]))
    assert load_checkpoint(run2 / "last.pt")["epoch"] == 2


def test_resume_refuses_a_changed_kl_norm_against_an_old_checkpoint(tmp_path):
    run, base = _make_old_run(tmp_path, "old")
    changed = [o for o in base if not o.startswith("st.kl_norm")] + ["st.kl_norm=plain"]
    with pytest.raises(ConfigError, match=r"st\.kl_norm: \"layer\" -> \"plain\""):
        engine.train(load_config(None, changed + ["epochs=2", "resume=auto"]))
