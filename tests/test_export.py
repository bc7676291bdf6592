"""Export: every format reproduces the in-library sub-network, loads without stimulative, has fewer parameters;
backbones load strictly into torchvision's detection backbones; bad input gives one-line errors (exit 2)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision
from conftest import randomize_bn
from torchvision.models.resnet import BasicBlock, ResNet

import stimulative as st
from stimulative import cli
from stimulative.data import build_data
from stimulative.deploy.export import (
    EXPORT_FORMATS,
    backbone_state_dict,
    check_format,
    count_parameters,
    export_backbone,
    export_model,
)
from stimulative.models import CifarResNet, plain_architecture, plain_architecture_code
from stimulative.provenance import run_start
from stimulative.train.checkpoint import load_model, save_checkpoint
from stimulative.train.config import config_from_dict, config_to_dict

BN_IMAGES = 48


def make_checkpoint(path, name="cifar_resnet_tiny", seed=0, **model_kwargs):
    """A training-style checkpoint of a randomly initialised model (random BN statistics) on synthetic data."""
    cfg = config_from_dict({"model": {"name": name, "kwargs": model_kwargs},
                            "data": {"name": "synthetic", "train_subset": 96, "test_subset": 32},
                            "batch_size": 16, "eval_batch_size": 32})
    torch.manual_seed(seed)
    model = randomize_bn(st.create_model(name, num_classes=10, **model_kwargs), seed=seed + 1)
    save_checkpoint({"format": "stimulative-v1", "model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 10, "epoch": 1, "step": 1, "metrics": {}, "best_acc": 0.0,
                     "starts": [run_start()]}, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def r18_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18.pt", name="resnet18")


def reference_subnet_output(ckpt, depths, x, bn_images):
    """The in-library sub-network: ed.depth(...) on the FULL loaded model (no extraction), BN re-estimated
    inside the context on the same training batches the export command uses."""
    loaded = load_model(ckpt)
    cfg = loaded.config
    bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    with loaded.ed.depth(depths):
        if bn_images:
            st.recalibrate_bn(loaded.model, bundle.train, bn_images)
        loaded.model.eval()
        with torch.no_grad():
            return loaded.model(x), count_parameters(loaded.model)


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


def probe(n=3, size=32, seed=7):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------
# Every format reproduces the sub-network
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["pt", "torchscript", "onnx", "safetensors"])
def test_export_formats_reproduce_subnetwork(tiny_ckpt, tmp_path, fmt):
    depths = [1, 2, 1]
    out = tmp_path / f"sub.{fmt}"
    assert run_cli("export", tiny_ckpt, "--depth", "1,2,1", "--format", fmt, "-o", out,
                   "--bn-recal", BN_IMAGES) == 0
    x = probe()
    expected, full_params = reference_subnet_output(tiny_ckpt, depths, x, BN_IMAGES)
    plain = CifarResNet(depths, num_classes=10, widths=(8, 16, 32)).eval()   # the smaller architecture
    if fmt == "pt":
        got = load_model(out).model(x)
        plain.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    elif fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    elif fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])   # batch 3: dynamic axis
    else:
        from safetensors.torch import load_file

        sidecar = json.loads(out.with_suffix(".json").read_text())
        assert sidecar["depths"] == depths and sidecar["num_classes"] == 10
        assert sidecar["model"] == "cifar_resnet_tiny"
        plain.load_state_dict(load_file(str(out)), strict=True)
        got = plain(x)
    torch.testing.assert_close(got.detach(), expected, atol=1e-4, rtol=1e-4)

    summary = json.loads((tmp_path / f"sub.{fmt}.summary.json").read_text())
    assert summary["depths"] == depths and summary["format"] == fmt
    assert summary["params"] == count_parameters(plain) < summary["params_full"] == full_params
    assert summary["max_abs_diff"] < 1e-4 and summary["bn_recal_images"] == BN_IMAGES


def test_bn_recal_changes_statistics_and_can_be_skipped(tiny_ckpt, tmp_path):
    """--bn-recal 0 keeps the trained statistics; the default path re-estimates them for the depth."""
    run_cli("export", tiny_ckpt, "--depth", "1,1,1", "-o", tmp_path / "raw.pt", "--bn-recal", 0)
    run_cli("export", tiny_ckpt, "--depth", "1,1,1", "-o", tmp_path / "recal.pt", "--bn-recal", BN_IMAGES)
    trained = torch.load(tiny_ckpt, weights_only=True)["model"]
    raw = torch.load(tmp_path / "raw.pt", weights_only=True)["model"]
    recal = torch.load(tmp_path / "recal.pt", weights_only=True)["model"]
    key = "layer3.0.bn2.running_mean"
    torch.testing.assert_close(raw[key], trained[key])
    assert not torch.allclose(recal[key], trained[key])
    assert len(raw) < len(trained) and set(raw) == set(recal)
    # the export keeps the provenance of the run it was cut from
    starts = torch.load(tiny_ckpt, weights_only=True)["starts"]
    assert len(starts) == 1 and torch.load(tmp_path / "raw.pt", weights_only=True)["starts"] == starts


def test_pt_export_loads_into_plain_torchvision_resnet(r18_ckpt, tmp_path):
    out = tmp_path / "r18_2112.pt"
    assert run_cli("export", r18_ckpt, "--depth", "2,1,1,2", "-o", out, "--bn-recal", 0) == 0
    state = torch.load(out, weights_only=True)["model"]
    plain = ResNet(BasicBlock, [2, 1, 1, 2], num_classes=10).eval()   # plain torchvision, no stimulative
    plain.load_state_dict(state, strict=True)
    full = torchvision.models.resnet18(num_classes=10)
    assert count_parameters(plain) < count_parameters(full)
    x = probe()
    expected, _ = reference_subnet_output(r18_ckpt, [2, 1, 1, 2], x, 0)
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    summary = json.loads((tmp_path / "r18_2112.pt.summary.json").read_text())
    assert summary["plain_architecture"].startswith("torchvision.models.resnet.ResNet(torchvision.models.resnet."
                                                    "BasicBlock, [2, 1, 1, 2]")


def test_timm_vit_safetensors_loads_into_timm_with_fewer_blocks(tmp_path):
    import timm
    from safetensors.torch import load_file

    kwargs = {"img_size": 32, "patch_size": 8, "depth": 4}
    torch.manual_seed(0)
    ed = st.ElasticDepth(st.create_model("timm/vit_tiny_patch16_224", num_classes=10, **kwargs))
    sub = ed.extract([2]).eval()
    info = export_model(sub, tmp_path / "vit.safetensors", "safetensors", model_name="timm/vit_tiny_patch16_224",
                        num_classes=10, depths=[2], input_size=32, config={"model": {"kwargs": kwargs}})
    assert "depth=2" in info["plain_architecture"]
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2).eval()
    plain.load_state_dict(load_file(str(tmp_path / "vit.safetensors")), strict=True)
    x = probe(2)
    with torch.no_grad(), ed.depth([2]):
        torch.testing.assert_close(plain(x), ed.model.eval()(x), atol=1e-5, rtol=1e-5)


def test_plain_architecture_is_none_without_a_builder():
    ed = st.ElasticDepth(st.create_model("mobilenet_v3_small", num_classes=10))
    sub = ed.extract(ed.min_depths)
    assert plain_architecture_code(sub, "mobilenet_v3_small", 10) is None
    assert plain_architecture(sub, "mobilenet_v3_small", 10) is None


# ------------------------------------------------------------------------------------------------------------
# Backbones
# ------------------------------------------------------------------------------------------------------------

def test_backbone_export_loads_strictly_into_resnet_fpn_backbone(r18_ckpt, tmp_path):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    out = tmp_path / "r18_backbone.pth"
    assert run_cli("export", r18_ckpt, "--format", "backbone", "-o", out, "--bn-recal", 0) == 0
    state = torch.load(out, weights_only=True)
    expected_keys = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    assert set(state) == expected_keys
    fpn = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    fpn.body.load_state_dict(state, strict=True)   # FrozenBatchNorm2d body; num_batches_tracked is dropped
    # the body computes the same features as our network's layer4
    loaded = load_model(r18_ckpt)
    m, x = loaded.model, probe(2, 64)
    with torch.no_grad():
        h = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        torch.testing.assert_close(fpn.body.eval()(x)["3"], h, atol=1e-4, rtol=1e-4)


def test_export_backbone_of_a_subnetwork_fits_the_smaller_resnet(tmp_path):
    from torchvision.models._utils import IntermediateLayerGetter

    ed = st.ElasticDepth(st.create_model("resnet18", num_classes=10))
    export_backbone(ed, tmp_path / "b.pth", depths=[1, 2, 1, 2])
    body = IntermediateLayerGetter(ResNet(BasicBlock, [1, 2, 1, 2]), {"layer4": "out"})
    body.load_state_dict(torch.load(tmp_path / "b.pth", weights_only=True), strict=True)
    assert not any(k.startswith("fc.") for k in backbone_state_dict(ed.extract([1, 2, 1, 2])))
    with pytest.raises(ValueError, match="depths needs an ElasticDepth"):
        export_backbone(ed.model, tmp_path / "c.pth", depths=[1, 1, 1, 1])


# ------------------------------------------------------------------------------------------------------------
# Command-line behaviour and errors
# ------------------------------------------------------------------------------------------------------------

def test_trailing_overrides_and_evaluation(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "e.pt"
    assert run_cli("export", tiny_ckpt, "--depth", "1,1,1", "-o", out, "--bn-recal", 16, "--evaluate",
                   "data.test_subset=20") == 0
    summary = json.loads((tmp_path / "e.pt.summary.json").read_text())
    assert summary["test_images"] == 20 and 0 <= summary["accuracy"] <= 100
    # the exported checkpoint evaluates to the same accuracy with load_model (what `stimulative eval` uses)
    loaded = load_model(out)
    assert loaded.depths == [1, 1, 1] and loaded.ed is None
    cfg = loaded.config
    bundle = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    assert bundle.test.images.shape[0] == 20   # the override was stored in the exported config
    assert st.evaluate(loaded.model, bundle.test)["acc"] == pytest.approx(summary["accuracy"])
    assert "exported depths 1,1,1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--depth", "1,2,x"], "comma-separated integers"),
    (["--depth", "1,2,3"], "outside [1, 2]"),
    (["--depth", "1,1"], "has 2 entries but the model has 3 stages"),
    (["--format", "tflite"], "valid formats: pt, torchscript, onnx, safetensors, backbone"),
    (["--bn-recal", "-1"], "--bn-recal must be >= 0"),
    (["model.bogus=1"], "unknown config key 'model.bogus'"),
])
def test_bad_input_gives_one_line_error(tiny_ckpt, tmp_path, capsys, argv, message):
    rc = run_cli("export", tiny_ckpt, "-o", tmp_path / "x.pt", *argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("stimulative export: error:") and message in err
    assert not (tmp_path / "x.pt").exists()


def test_missing_checkpoint_and_reexport_are_errors(tiny_ckpt, tmp_path, capsys):
    assert run_cli("export", tmp_path / "nope.pt", "-o", tmp_path / "x.pt") == 2
    assert "does not exist" in capsys.readouterr().err
    run_cli("export", tiny_ckpt, "--depth", "1,1,1", "-o", tmp_path / "s.pt", "--bn-recal", 0)
    assert run_cli("export", tmp_path / "s.pt", "-o", tmp_path / "t.pt") == 2
    assert "already an exported sub-network" in capsys.readouterr().err


def test_check_format_and_library_errors(tmp_path):
    assert check_format("onnx") == "onnx" and "backbone" in EXPORT_FORMATS
    with pytest.raises(ValueError, match="unsupported export format 'h5'"):
        check_format("h5")
    ed = st.ElasticDepth(st.create_model("cifar_resnet_tiny", num_classes=10))
    with pytest.raises(ValueError, match="needs the training config"):
        export_model(copy.deepcopy(ed.model), tmp_path / "a.pt", "pt", model_name="cifar_resnet_tiny",
                     num_classes=10, depths=None, input_size=32)
