"""Accelerate integration: ``examples/accelerate_st.py``'s ``train()`` == the plain ``StimulativeStep`` loop.

The script's training function runs in this process (one CPU process: ``accelerator.no_sync`` is a null
context, ``accelerator.backward`` calls ``loss.backward()``) and its parameters and BN buffers after 4
optimiser steps equal the plain loop's with the same seeds and data, ST++ options on. With
``mixed_precision="bf16"`` the reference runs the model's forward under
``torch.autocast("cpu", torch.bfloat16)`` as Accelerate does.
In two forked CPU processes (Accelerate's MULTI_CPU, gloo DDP) it equals one process on the whole batch.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import NUM_CLASSES, batch, groupnorm_tiny, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import stimulative as st

accelerate = pytest.importorskip("accelerate")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "accelerate_st.py"
ST_OPTIONS = dict(num_subnets=2, kl_norm="layer", amplitude="adaptive", min_input_scale=0.5,
                  kl_schedule="cosine_down")
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


def tiny_model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES)).to(dtype)


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
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / total, 1.0))))
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
            assert torch.allclose(got[name], value, rtol=tol, atol=tol), \
                (name, (got[name] - value).abs().max())
        else:
            assert torch.equal(got[name], value), name


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_train_function_equals_plain_loop(mixed_precision):
    script = load_script()
    dtype = torch.float64 if mixed_precision == "no" else torch.float32   # float64: see the Lightning test
    x, y = batch(SAMPLES, seed=7, dtype=dtype)
    reference = tiny_model(dtype)
    expected_drawn = plain_loop(reference, x, y, autocast=mixed_precision == "bf16")

    model = tiny_model(dtype)
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision=mixed_precision)
    result = script.train(model, DataLoader(TensorDataset(x, y), batch_size=BATCH), epochs=EPOCHS, lr=LR,
                          st_options=ST_OPTIONS, seed=SEED, accelerator=accelerator)

    assert result["model"] is model and len(result["losses"]) == EPOCHS * SAMPLES // BATCH
    assert result["drawn"] == expected_drawn
    assert any(size != (32, 32) for _, sizes in result["drawn"] for size in sizes)
    assert result["step"].backward == accelerator.backward
    assert_states_close(model.state_dict(), reference.state_dict(), 1e-9 if mixed_precision == "no" else 1e-4)


def test_script_main_runs_offline(capsys):
    """The command line (synthetic data, default ST++ options at a small size) trains and reports accuracy."""
    script = load_script()
    result = script.main(["--samples", "32", "--batch-size", "16", "--epochs", "1",
                          "--model", "cifar_resnet_tiny"])
    assert len(result["losses"]) == 2
    assert all(math.isfinite(loss["loss"]) for loss in result["losses"])
    assert "held-out accuracy" in capsys.readouterr().out


def gn_model() -> nn.Module:
    """float64 GroupNorm tiny ResNet: two half batches == the whole batch."""
    return groupnorm_tiny().double()


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    script = load_script()
    accelerator = accelerate.Accelerator(
        cpu=True, kwargs_handlers=[accelerate.DistributedDataParallelKwargs(find_unused_parameters=True)])
    assert accelerator.num_processes == world_size
    buckets = []                                   # every gradient all-reduce, by bucket index

    def count_all_reduces(state, bucket):
        buckets.append(bucket.index())
        fut = dist.all_reduce(bucket.buffer().div_(world_size), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    prepare = accelerator.prepare

    def prepare_and_count(*objects):
        prepared = prepare(*objects)
        prepared[0].register_comm_hook(None, count_all_reduces)
        return prepared

    accelerator.prepare = prepare_and_count
    x, y = batch(SAMPLES, seed=7, dtype=torch.float64)
    model = gn_model()
    # Accelerate gives process r the batches r, r + 2, ... of the loader: together one batch of BATCH per step
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH // world_size)
    result = script.train(model, loader, epochs=EPOCHS, lr=LR, st_options=ST_OPTIONS, seed=SEED,
                          accelerator=accelerator)
    torch.save({"state": model.state_dict(), "drawn": result["drawn"],
                "ddp": isinstance(result["step"].model, nn.parallel.DistributedDataParallel),
                "buckets": buckets},
               os.path.join(out_dir, f"rank{rank}.pt"))
    accelerator.end_training()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed gloo")
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_two_processes_equal_one_process_on_whole_batch(tmp_path):
    import torch._dynamo  # noqa: F401  (DDP imports it: once here, not in every forked child)

    context = mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail("Accelerate workers did not finish in 120 s")

    x, y = batch(SAMPLES, seed=7, dtype=torch.float64)
    reference = gn_model()
    expected_drawn = plain_loop(reference, x, y)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert result["ddp"]                                   # the step called the DDP wrapper
        assert result["drawn"] == expected_drawn
        assert_states_close(result["state"], reference.state_dict(), 1e-9)
        # no_sync: every bucket all-reduced once per step (3 passes per step, one synchronised)
        buckets = result["buckets"]
        assert buckets and len(buckets) == len(expected_drawn) * len(set(buckets)), buckets
