"""Lightning integration: ``StimulativeModule`` + ``Trainer`` == the plain ``StimulativeStep`` loop.

* one process: the parameters and BN buffers after 4 optimiser steps (2 epochs, ``kl_schedule`` applied per
  epoch, per-iteration cosine LR) equal those of the plain loop with the same seeds and data, ST++ options on;
* DDP (``DDPStrategy(start_method="fork")``, i.e. ``ddp_spawn``'s launcher with fork; 2 CPU processes, gloo):
  both ranks and the parent equal one process on the whole batch; the gradients are all-reduced once per
  step (the main pass and all sub-network passes but the last run in ``block_backward_sync``). The model uses
  GroupNorm, as tests/test_ddp_step.py explains; each rank reads a fixed half of every batch.

Models and data are float64: the gradient of these tiny ReLU networks jumps where a pre-activation crosses 0,
and in float32 the last-bit differences of a different summation order (two half batches + all-reduce) were
measured to move some steps' gradients by 4e-4; in float64 the runs agree to 1e-12.
"""

from __future__ import annotations

import datetime
import math
import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import NUM_CLASSES, batch, groupnorm_tiny, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

import stimulative as st

pl = pytest.importorskip("lightning.pytorch")
from stimulative.integrations.lightning import StimulativeModule, cosine_schedule  # noqa: E402

ST_OPTIONS = dict(num_subnets=2, kl_norm="layer", amplitude="adaptive", min_input_scale=0.5,
                  kl_schedule="cosine_down")
EPOCHS, SAMPLES, BATCH = 2, 16, 8          # 2 steps per epoch, 4 optimiser steps
SEED = 3                                   # sampler seed; input sizes: SEED + 1


def optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES)).double()


def gn_model() -> nn.Module:
    """float64 GroupNorm tiny ResNet (per-sample: halves == whole batch)."""
    return groupnorm_tiny().double()


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list, dict]:
    """The reference: StimulativeStep + SGD + per-iteration cosine LR, set_epoch at every epoch start."""
    model.train()
    ed = st.ElasticDepth(model)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=SEED), seed=SEED + 1, **ST_OPTIONS)
    opt = optimizer(model.parameters())
    sched = cosine_schedule(opt, EPOCHS * SAMPLES // BATCH)
    drawn, losses = [], {}
    for epoch in range(EPOCHS):
        step.set_epoch(epoch, EPOCHS)
        for i in range(0, SAMPLES, BATCH):
            losses = step(x[i:i + BATCH], y[i:i + BATCH])
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            drawn.append((step.last_configs, step.last_sizes))
    return drawn, losses


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


class Drawn(pl.Callback):
    """Records the sub-networks and input sizes of every step; saves the final state of this rank."""

    def __init__(self, out_dir: str | None = None):
        self.out_dir, self.drawn = out_dir, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.drawn.append((module.step.last_configs, module.step.last_sizes))

    def on_train_end(self, trainer, module):
        if self.out_dir is not None:
            state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
            path = os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt")
            torch.save({"state": state, "drawn": self.drawn}, path)


def assert_states_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(got[name], value, rtol=1e-9, atol=1e-10), \
                (name, (got[name] - value).abs().max())
        else:
            assert torch.equal(got[name], value), name


def test_trainer_equals_plain_loop(tmp_path):
    x, y = batch(SAMPLES, seed=7, dtype=torch.float64)
    expected_drawn, expected_losses = plain_loop(reference := bn_model(), x, y)

    module = StimulativeModule(bn_model(), st=ST_OPTIONS, optimizer=optimizer, scheduler="cosine", seed=SEED,
                               eval_depths=[[1, 1, 1]])
    drawn = Drawn()
    t = trainer(callbacks=[drawn], default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    t.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH),
          DataLoader(TensorDataset(x[:4], y[:4]), batch_size=4))

    assert t.global_step == EPOCHS * SAMPLES // BATCH
    assert drawn.drawn == expected_drawn
    assert any(size != (32, 32) for _, sizes in drawn.drawn for size in sizes)
    assert_states_close(module.model.state_dict(), reference.state_dict())
    assert module.last_losses == pytest.approx(expected_losses)
    # logged with self.log; kl_schedule="cosine_down": lambda 1 in epoch 0, 0.5 in epoch 1 of 2
    metrics = t.callback_metrics
    for key in ("train/loss_step", "train/main_step", "train/subnet_step", "train/loss_epoch", "val/loss",
                "val/acc", "val/acc@1-1-1"):
        assert key in metrics, sorted(metrics)
    assert float(metrics["train/main_step"]) == pytest.approx(expected_losses["main"])
    assert float(metrics["train/kl_weight"]) == pytest.approx(0.5)
    assert float(metrics["train/lr"]) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))   # step 4


def test_recipe_section_and_pickling():
    """``st=`` also takes a recipe's ``st`` section (STConfig); the unfitted module pickles (ddp_spawn)."""
    section = st.STConfig(num_subnets=3, kl_norm="layer", kl_schedule="cosine_up", start_epoch=1,
                          sampling="inter_stage", ranges=[1, 1, 1])
    module = StimulativeModule(bn_model(), st=section)
    clone = pickle.loads(pickle.dumps(module))
    step = clone.build()
    assert (step.num_subnets, step.kl_norm, step.kl_schedule) == (3, "layer", "cosine_up")
    assert step.space.kind == "inter_stage"
    step.set_epoch(0, 4)
    assert step.active_kl_weight == 0.0 and step.active_subnets == 0
    with pytest.raises(ValueError, match="set by StimulativeModule"):
        StimulativeModule(bn_model(), st=dict(num_subnets=2, seed=1))


def test_built_module_pickles_and_keeps_its_depths():
    """After ``build()`` the patched model still pickles; the clone is elastic and gives the same outputs."""
    module = StimulativeModule(bn_model(), st=dict(num_subnets=2))
    module.build()
    module.eval()
    clone = pickle.loads(pickle.dumps(module))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    depth = [1] * len(module.ed.full_depths)
    with torch.no_grad(), module.ed.depth(depth):
        expected = module.model(x)
    with torch.no_grad(), clone.ed.depth(depth):
        got = clone.model(x)
    assert clone.ed.full_depths == module.ed.full_depths
    assert torch.equal(got, expected)
    with torch.no_grad():
        assert not torch.equal(clone.model(x), got)  # the full depth differs: the depth really applied


class RankHalf(Sampler):
    """Rank r of w reads samples r, r + w, ...: every global batch of BATCH is split into equal halves."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        return self.n // 2


class AllReduceCounter(pl.Callback):
    """Counts the DDP gradient all-reduces of every step (a comm hook that all-reduces as DDP would)."""

    def __init__(self):
        self.per_step: list[list[int]] = []
        self.buckets: list[int] = []

    def on_train_start(self, trainer, module):
        def hook(state, bucket):
            self.buckets.append(bucket.index())
            fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        trainer.strategy.model.register_comm_hook(None, hook)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.per_step.append(self.buckets)
        self.buckets = []

    def on_train_end(self, trainer, module):
        path = os.path.join(trainer.default_root_dir, f"allreduce{trainer.global_rank}.pt")
        torch.save(self.per_step, path)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed gloo")
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_ddp_two_processes_equal_one_process_on_whole_batch(tmp_path):
    import torch._dynamo  # noqa: F401  (DDP imports it: once here, not in every forked child)
    from lightning.pytorch.strategies import DDPStrategy

    x, y = batch(SAMPLES, seed=7, dtype=torch.float64)
    expected_drawn, _ = plain_loop(reference := gn_model(), x, y)

    module = StimulativeModule(gn_model(), st=ST_OPTIONS, optimizer=optimizer, scheduler="cosine", seed=SEED)
    strategy = DDPStrategy(start_method="fork", process_group_backend="gloo", find_unused_parameters=True,
                           timeout=datetime.timedelta(seconds=60))
    t = trainer(devices=2, strategy=strategy, use_distributed_sampler=False, default_root_dir=str(tmp_path),
                callbacks=[Drawn(str(tmp_path)), AllReduceCounter()])
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH // 2, sampler=RankHalf(SAMPLES))
    t.fit(module, loader)

    expected = reference.state_dict()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert result["drawn"] == expected_drawn                # same sub-networks and sizes on every rank
        assert_states_close(result["state"], expected)
        per_step = torch.load(tmp_path / f"allreduce{rank}.pt")
        assert len(per_step) == EPOCHS * SAMPLES // BATCH
        for buckets in per_step:                                # every bucket exactly once per step
            assert buckets and sorted(buckets) == sorted(set(buckets)), per_step
    assert_states_close(module.model.state_dict(), expected)   # the parent got rank 0's weights back
    assert any(sum(c) < 6 for configs, _ in expected_drawn for c in configs)   # sub-networks skip blocks


def test_example_runs_offline():
    """examples/lightning_st.py (synthetic data) trains with Trainer(max_epochs=...) and validates."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "lightning_st.py"
    spec = importlib.util.spec_from_file_location("lightning_st", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    t, module = example.main(["--samples", "40", "--batch-size", "16", "--epochs", "1", "--model",
                              "cifar_resnet_tiny", "--accelerator", "cpu", "--devices", "1"])
    assert t.global_step == 2 and t.current_epoch == 1
    assert {"train/loss_epoch", "val/acc", "val/acc@1-1-1"} <= set(t.callback_metrics)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed gloo")
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_ddp_without_find_unused_parameters_is_refused(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    module = StimulativeModule(gn_model(), st=ST_OPTIONS, optimizer=optimizer)
    strategy = DDPStrategy(start_method="fork", process_group_backend="gloo", find_unused_parameters=False,
                           timeout=datetime.timedelta(seconds=60))
    t = trainer(devices=2, strategy=strategy, default_root_dir=str(tmp_path))
    x, y = batch(SAMPLES, seed=7, dtype=torch.float64)
    with pytest.raises(Exception, match="find_unused_parameters=True"):
        t.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH))
