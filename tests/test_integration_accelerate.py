"""Accelerate integration: ``examples/accelerate_st.py``'s ``train()`` == the plain ``StimulativeStep`` loop.

The script's training function runs in this process (one CPU process: ``accelerator.no_sync`` is a null
context, ``accelerator.backward`` calls ``loss.backward()``) and its parameters and BN buffers after 4 optimiser
steps equal the plain loop's with the same seeds and data, ST++ options on. With ``mixed_precision="bf16"`` the
reference runs the model's forward under ``torch.autocast("cpu", torch.bfloat16)`` as Accelerate does.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from conftest import NUM_CLASSES, batch, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import stimulative as st

accelerate = pytest.importorskip("accelerate")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "accelerate_st.py"
ST_OPTIONS = dict(num_subnets=2, kl="layer", amplitude="adaptive", min_input_scale=0.5, kl_schedule="cosine_down")
EPOCHS, SAMPLES, BATCH, LR, SEED = 2, 16, 8, 0.1, 3


def load_script():
    spec = importlib.util.spec_from_file_location("accelerate_st", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state; start and leave every test with none."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES))


class AutocastForward(nn.Module):
    """The model's forward under bf16 autocast, logits back in fp32 (what Accelerate's prepare() does)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(x)
        return out.float()


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool = False) -> list:
    model.train()
    ed = st.ElasticDepth(model)
    space = st.SampleSpace.for_model(ed, seed=SEED)
    step = st.StimulativeStep(ed, space, model=AutocastForward(model) if autocast else None, seed=SEED + 1,
                              **ST_OPTIONS)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    total = EPOCHS * SAMPLES // BATCH
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / total, 1.0))))
    drawn = []
    for epoch in range(EPOCHS):
        step.set_epoch(epoch, EPOCHS)
        for i in range(0, SAMPLES, BATCH):
            step(x[i:i + BATCH], y[i:i + BATCH])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            drawn.append((step.last_configs, step.last_sizes))
    return drawn


def assert_states_close(got: dict, expected: dict, tol: float) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(got[name], value, rtol=tol, atol=tol), (name, (got[name] - value).abs().max())
        else:
            assert torch.equal(got[name], value), name


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_train_function_equals_plain_loop(mixed_precision):
    script = load_script()
    x, y = batch(SAMPLES, seed=7)
    reference = tiny_model()
    expected_drawn = plain_loop(reference, x, y, autocast=mixed_precision == "bf16")

    model = tiny_model()
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision=mixed_precision)
    result = script.train(model, DataLoader(TensorDataset(x, y), batch_size=BATCH), epochs=EPOCHS, lr=LR,
                          st_options=ST_OPTIONS, seed=SEED, accelerator=accelerator)

    assert result["model"] is model and len(result["losses"]) == EPOCHS * SAMPLES // BATCH
    assert result["drawn"] == expected_drawn
    assert any(size != (32, 32) for _, sizes in result["drawn"] for size in sizes)
    assert result["step"].backward == accelerator.backward
    assert_states_close(model.state_dict(), reference.state_dict(), 1e-5 if mixed_precision == "no" else 1e-4)


def test_script_main_runs_offline(capsys):
    """The command line (synthetic data, default ST++ options at a small size) trains and reports accuracy."""
    script = load_script()
    result = script.main(["--samples", "32", "--batch-size", "16", "--epochs", "1", "--model", "cifar_resnet_tiny"])
    assert len(result["losses"]) == 2
    assert all(math.isfinite(loss["loss"]) for loss in result["losses"])
    assert "held-out accuracy" in capsys.readouterr().out
