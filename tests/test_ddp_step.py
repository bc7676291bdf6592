"""StimulativeStep under DistributedDataParallel (gloo, 2 CPU processes) == one process on the whole batch.

The model is a tiny CIFAR ResNet with every BatchNorm replaced by GroupNorm: BN in train mode normalises with
per-rank batch statistics, so two half batches would legitimately differ from one whole batch; GroupNorm is
per sample, which makes the comparison exact. Both ranks use the same SampleSpace seed and step seed, so they
draw the same sub-networks and input sizes. The loss is a batch mean and both ranks get equal halves, so DDP's
gradient average equals the full-batch gradient.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import batch, groupnorm_tiny
from torch import nn

import stimulative as st
from stimulative.core.elastic import SKIP

NUM_SUBNETS = 2
STEP_OPTIONS = dict(num_subnets=NUM_SUBNETS, kl_norm="layer", amplitude="adaptive", min_input_scale=0.5,
                    freeze_subnet_bn=True, seed=5)
SPACE_SEED = 2
TIMEOUT_S = 120




def make_step(model: nn.Module, ddp: nn.Module | None = None) -> st.StimulativeStep:
    ed = st.ElasticDepth(model)
    space = st.SampleSpace.for_model(ed, seed=SPACE_SEED)
    return st.StimulativeStep(ed, space, model=ddp, **STEP_OPTIONS)


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = {}
        # find_unused_parameters=False must be refused with a clear error (num_subnets=0 is fine)
        plain = groupnorm_tiny()
        ddp_strict = nn.parallel.DistributedDataParallel(plain, find_unused_parameters=False)
        ed = st.ElasticDepth(plain)
        try:
            st.StimulativeStep(ed, st.SampleSpace.for_model(ed), num_subnets=2, model=ddp_strict)
            result["strict_error"] = None
        except ValueError as err:
            result["strict_error"] = str(err)
        st.StimulativeStep(ed, st.SampleSpace.for_model(ed), num_subnets=0, model=ddp_strict)

        model = groupnorm_tiny()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        step = make_step(model, ddp)
        x, y = batch(8, seed=3)
        half = x.shape[0] // world_size
        losses = step(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
        result.update(
            grads={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            configs=step.last_configs, sizes=step.last_sizes, losses=losses,
        )
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out_dir: str, world_size: int = 2) -> None:
    # fork (as PyTorch's own MultiProcessTestCase does) saves re-importing torch in every child, which takes
    # 5-10 s each on a busy 2-core machine; safe here because the test process runs with one intra-op thread
    # (conftest) and the workers set it again before any op. Spawn where fork does not exist.
    # DistributedDataParallel.__init__ imports torch._dynamo (seconds): do it once here, before forking.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if start_method == "fork":
        import torch._dynamo  # noqa: F401
    context = mp.start_processes(_worker, args=(world_size, _free_port(), out_dir), nprocs=world_size,
                                 join=False, start_method=start_method)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f"DDP workers did not finish in {TIMEOUT_S}s (hang in gradient synchronisation?)")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_step_equals_single_process_on_whole_batch(tmp_path):
    _run_workers(str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # the clear error for find_unused_parameters=False
    for result in ranks:
        assert result["strict_error"] is not None and "find_unused_parameters=True" in result["strict_error"]

    # single process, whole batch, same seeds
    model = groupnorm_tiny()
    step = make_step(model)
    x, y = batch(8, seed=3)
    step(x, y)
    assert ranks[0]["configs"] == ranks[1]["configs"] == step.last_configs
    assert ranks[0]["sizes"] == ranks[1]["sizes"] == step.last_sizes
    # the sub-networks skip blocks (so DDP really has unused parameters) and see smaller inputs
    ed = step.ed
    assert len(step.last_configs) == NUM_SUBNETS
    for config in step.last_configs:
        assert any(m == SKIP for row in ed.block_modes(config) for m in row), config
    assert any(size != (32, 32) for size in step.last_sizes)

    expected = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in expected.values())
    for result in ranks:
        assert set(result["grads"]) == set(expected)
        for name, grad in expected.items():
            assert torch.allclose(result["grads"][name], grad, rtol=1e-5, atol=1e-5), \
                (name, (result["grads"][name] - grad).abs().max())
    # and the gradients of the two ranks are identical (all-reduced), not each rank's own half
    assert all(torch.equal(ranks[0]["grads"][n], ranks[1]["grads"][n]) for n in expected)
