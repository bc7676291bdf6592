"""ST during fine-tuning: sub-network passes skip the sampled blocks, get smaller inputs and train with the task
loss; the detection example runs a few steps on CPU."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

import stimulative as st
from stimulative.deploy.finetune import StimulativeFinetune, detection_input_scale

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_detection.py"


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_detection", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subnet_passes_skip_sampled_blocks_and_use_smaller_inputs():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    ft = StimulativeFinetune(model, num_subnets=3, min_input_scale=0.5, seed=1)
    ran: list[list[str]] = []
    # hook each block's first conv: a skipped block's (gated) forward returns its input without running it
    hooks = [block.conv1.register_forward_hook(lambda m, i, o, name=name: ran[-1].append(name))
             for name, block in model.named_modules() if name.count(".") == 1 and name.startswith("layer")]
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    sizes = []

    def loss_fn(scale):
        ran.append([])
        size = round(64 * scale)
        sizes.append(size)
        return {"ce": F.cross_entropy(model(F.interpolate(x, size=size)), y)}   # a loss dict is summed

    out = ft(loss_fn)
    for hook in hooks:
        hook.remove()
    assert len(ft.last_configs) == len(ft.last_scales) == len(ran) == 3
    for config, blocks in zip(ft.last_configs, ran):
        expected = [f"layer{i + 1}.{j}" for i, d in enumerate(config) for j in range(d)]
        assert blocks == expected                     # exactly the first d_i blocks of every stage ran
    assert all(0.5 <= s <= 1 for s in ft.last_scales) and min(sizes) < 64
    assert math.isfinite(out["subnet"]) and out["subnet"] > 0
    assert ft.ed.current_modes() == [[1] * 2] * 4      # full depth restored
    # gradients reach the blocks that ran, and only those
    used = {f"layer{i + 1}.{j}" for c in ft.last_configs for i, d in enumerate(c) for j in range(d)}
    for name, p in model.named_parameters():
        block = ".".join(name.split(".")[:2])
        if block.startswith("layer"):
            assert (p.grad is not None) == (block in used), name


def test_finetune_does_not_update_bn_running_stats():
    model = st.create_model("cifar_resnet_tiny", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    ft = StimulativeFinetune(model, num_subnets=2, seed=0)
    ft(lambda scale: F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)))
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_finetune_validates_arguments():
    model = st.create_model("cifar_resnet_tiny", num_classes=10)
    with pytest.raises(ValueError, match="min_input_scale"):
        StimulativeFinetune(model, min_input_scale=0)
    with pytest.raises(ValueError, match="do not match"):
        StimulativeFinetune(model, space=st.SampleSpace.ordered([3, 3, 3]))
    ft = StimulativeFinetune(model, num_subnets=1)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        ft(lambda scale: model(torch.randn(2, 3, 32, 32)).sum() * float("nan"))


def test_detection_input_scale_changes_and_restores_sizes():
    example = load_example()
    detector = example.build_detector(num_classes=3, size=96)
    with detection_input_scale(detector, 0.5):
        assert detector.transform.min_size == (48,) and detector.transform.max_size == 48
    assert detector.transform.min_size == (96,) and detector.transform.max_size == 96
    with pytest.raises(TypeError, match="torchvision detection model"):
        with detection_input_scale(torch.nn.Linear(2, 2), 0.5):
            pass


def test_detection_example_runs_a_few_steps(tmp_path, capsys):
    example = load_example()
    torch.manual_seed(0)
    # an ST-pretrained-style backbone exported with export_backbone loads into the detector
    from stimulative.deploy.export import export_backbone

    export_backbone(st.ElasticDepth(st.create_model("resnet18", num_classes=10)), tmp_path / "r18_backbone.pth")
    history = example.main(["--steps", "2", "--size", "64", "--batch", "1", "--num-subnets", "2",
                            "--backbone", str(tmp_path / "r18_backbone.pth")])
    assert len(history) == 2
    for record in history:
        assert math.isfinite(record["main"]) and math.isfinite(record["subnet"]) and record["subnet"] > 0
    assert "sub-network loss" in capsys.readouterr().out
