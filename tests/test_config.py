"""Config: every recipe loads, overrides parse as YAML, bad keys/types/values are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stimulative.cli import main
from stimulative.train.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

# the image-classification recipes (``stimulative train``); ``task: lm`` recipes belong to stimulative.lm
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")
                 if "task" not in (yaml.safe_load(p.read_text()) or {}))
REQUIRED_RECIPES = [
    "imagenet_resnet50_ct", "imagenet_resnet50_st", "imagenet_resnet50_stpp_a1", "imagenet_resnet50_stpp_a2",
    "cifar100_resnet50_stpp", "cifar100_mobilenetv3_stpp", "imagenet_vit_st",
    "cifar10_resnet20_ct", "cifar10_resnet20_st", "cifar10_resnet20_stpp",
    "cifar10_resnet56_ct", "cifar10_resnet56_st", "cifar10_resnet56_stpp",
]


def test_all_required_recipes_exist():
    assert {p.stem for p in RECIPES} >= set(REQUIRED_RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads_and_round_trips(recipe, tmp_path):
    cfg = load_config(recipe)
    assert cfg.name == recipe.stem, "a recipe's run name should be its file name"
    again = tmp_path / "again.yaml"
    save_config(cfg, again)
    assert load_config(again) == cfg
    if recipe.stem.endswith("_ct"):
        assert cfg.st.num_subnets == 0
    if "_stpp" in recipe.stem:
        assert cfg.st.num_subnets > 1
    if "_st" in recipe.stem and "_stpp" not in recipe.stem:
        assert cfg.st.num_subnets == 1 and cfg.st.kl_norm == "plain"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_model_space_and_eval_depths_fit(recipe):
    """The recipe's model builds, its sampling space exists and every eval_depths entry is a valid sub-network."""
    import torch

    import stimulative as st
    from stimulative.train.model import build_model

    cfg = load_config(recipe)
    torch.manual_seed(0)
    ed = st.ElasticDepth(build_model(cfg, 10), stages=cfg.model.stages)
    space = st.SampleSpace.for_model(ed, cfg.st.sampling, ranges=cfg.st.ranges)
    for depths in cfg.eval_depths:
        ed.block_modes(depths)
    if cfg.st.sampling == "inter_stage":
        assert cfg.eval_depths[0] in space, "the first eval sub-network should be one the recipe trains"


def test_paper_values_in_imagenet_recipes():
    a1 = load_config(Path(RECIPES[0]).parent / "imagenet_resnet50_stpp_a1.yaml")
    assert (a1.optim.lr, a1.batch_size, a1.epochs, a1.optim.weight_decay) == (0.2, 512, 200, 1e-4)
    assert (a1.data.input_size, a1.data.val_resize, a1.data.val_crop) == (200, 240, 224)
    assert (a1.st.num_subnets, a1.st.kl_norm, a1.st.sampling, a1.st.ranges) == (6, "layer", "inter_stage", [1, 2, 4, 1])
    assert a1.st.min_input_scale == 0.43 and a1.optim.nesterov and a1.optim.label_smoothing == 0
    a2 = load_config(Path(RECIPES[0]).parent / "imagenet_resnet50_stpp_a2.yaml")
    assert a2.epochs == 400 and a2.data.uniform_augment


def test_defaults_and_overrides_parse_as_yaml():
    cfg = load_config(None, ["epochs=3", "optim.lr=0.05", "channels_last=true", "eval_depths=[[1,1,1]]",
                             "resume=null", "st.amplitude=adaptive", "model.kwargs={shortcut: B}",
                             "optim.min_lr=1e-5", "--seed=7"])
    assert cfg.epochs == 3 and cfg.optim.lr == 0.05 and cfg.channels_last is True
    assert cfg.eval_depths == [[1, 1, 1]] and cfg.resume is None and cfg.st.amplitude == "adaptive"
    assert cfg.model.kwargs == {"shortcut": "B"} and cfg.seed == 7
    assert cfg.optim.min_lr == 1e-5  # YAML 1.1 reads "1e-5" as a string; floats accept it
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0 and isinstance(load_config(None, ["optim.lr=1"])
                                                                             .optim.lr, float)
    assert str(Config(name="x", out_dir="runs").run_dir) == "runs/x"


def test_config_dict_round_trip():
    cfg = load_config(None, ["st.num_subnets=6", "st.kl_norm=layer"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))) == cfg


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=0.1"], r"unknown config key 'optim.lrr'; valid keys here: .*\blr\b.*warmup_epochs"),
    (["epoch=3"], r"unknown config key 'epoch'; valid keys here: .*\bepochs\b"),
    (["epochs=three"], r"config key 'epochs' expects int, got 'three'"),
    (["epochs=1e2"], r"config key 'epochs' expects int"),
    (["channels_last=maybe"], r"config key 'channels_last' expects bool"),
    (["optim.name=lamb"], r"'optim.name' must be one of sgd, adamw, got 'lamb'"),
    (["st.kl_norm=cosine"], r"'st.kl_norm' must be one of plain, layer, layer_sg, l2"),
    (["amp=fp8"], r"'amp' must be one of none, bf16, fp16"),
    (["epochs=0"], r"epochs must be >= 1"),
    (["ema=1.5"], r"ema must be in \[0, 1\)"),
    (["st.amplitude=-1"], r"st.amplitude must be a positive number or 'adaptive'"),
    (["st.sampling=inter_stage"], r"needs st.ranges"),
    (["st.sampling=choices"], r"needs st.depths"),
    (["st.depths=[[1,1,1]]"], r"st.depths is for st.sampling=choices"),
    (["eval_depths=[1,1,1]"], r"eval_depths must be a list of depth lists"),
    (["resume=/no/such/last.pt"], r"resume checkpoint '/no/such/last.pt' does not exist"),
    (["optim.lr"], r"must look like key=value"),
    (["optim=3"], r"optim must be a mapping"),
    (["optim.lr.x=1"], r"'optim.lr' is a value, not a section: cannot set optim.lr.x"),
    (["optim.betas=[0.9]"], r"optim.betas must be two numbers"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(bad)


def test_apply_overrides_nested_dict():
    data = apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=0.2", "st.num_subnets=6"])
    assert data == {"optim": {"lr": 0.2}, "st": {"num_subnets": 6}}


def test_cli_train_rejects_a_bad_key_with_one_line(capsys, tmp_path):
    code = main(["train", str(RECIPES[0]), "optim.lrr=0.1", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("stimulative train: error: unknown config key 'optim.lrr'") and "valid keys here" in err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_cli_train_print_config(capsys):
    assert main(["train", "epochs=2", "st.num_subnets=1", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 2 and printed["st"]["num_subnets"] == 1
