"""StimulativeStep's framework hooks: ``backward=`` (every backward goes through it) and ``no_sync=`` (the
main pass and all sub-network passes but the last run in it), as Lightning and Accelerate use them."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from conftest import NUM_CLASSES, batch, randomize_bn

import stimulative as st

OPTIONS = dict(kl_norm="layer", amplitude="adaptive", min_input_scale=0.5, seed=4)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES)).train()


def make_step(model: torch.nn.Module, num_subnets: int, **hooks) -> st.StimulativeStep:
    ed = st.ElasticDepth(model)
    return st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=3), num_subnets=num_subnets, **OPTIONS,
                              **hooks)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class Recorder:
    """A ``backward`` recording every call (and whether a ``no_sync`` context was open), and a ``no_sync``."""

    def __init__(self):
        self.inside = 0
        self.calls: list[tuple[float, bool]] = []
        self.entered = 0

    def backward(self, loss: torch.Tensor) -> None:
        self.calls.append((float(loss.detach()), self.inside > 0))
        loss.backward()

    @contextlib.contextmanager
    def no_sync(self):
        self.entered += 1
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1


@pytest.mark.parametrize("num_subnets", [0, 1, 3])
def test_backward_hook_called_once_per_pass_with_default_gradients(num_subnets):
    x, y = batch(6, seed=1)
    default_model = tiny_model()
    default = make_step(default_model, num_subnets)
    default_losses = default(x, y)

    model = tiny_model()
    rec = Recorder()
    step = make_step(model, num_subnets, backward=rec.backward)
    losses = step(x, y)

    assert len(rec.calls) == 1 + num_subnets                      # main pass + every sub-network pass
    assert step.last_configs == default.last_configs and step.last_sizes == default.last_sizes
    assert losses == pytest.approx(default_losses)
    assert rec.calls[0][0] == pytest.approx(losses["main"])
    assert sum(v for v, _ in rec.calls[1:]) == pytest.approx(losses["subnet"])
    expected = grads(default_model)
    got = grads(model)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name


@pytest.mark.parametrize("num_subnets", [0, 1, 3])
def test_no_sync_open_for_every_pass_but_the_last(num_subnets):
    rec = Recorder()
    step = make_step(tiny_model(), num_subnets, backward=rec.backward, no_sync=rec.no_sync)
    step(*batch(6, seed=1))
    inside = [flag for _, flag in rec.calls]
    if num_subnets == 0:
        assert inside == [False] and rec.entered == 0             # one pass: it must synchronise
    else:
        assert inside == [True] * num_subnets + [False]           # main + n-1 sub-networks, then the last
    assert rec.inside == 0                                        # every context was closed


def test_no_sync_hook_wraps_the_forwards_too():
    """DDP decides in its forward whether the next backward all-reduces: the no-sync context must be open
    around the forward of every pass it covers, not only around its backward."""
    model = tiny_model()
    rec = Recorder()
    forwards: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(rec.inside > 0))
    step = make_step(model, 3, backward=rec.backward, no_sync=rec.no_sync)
    step(*batch(6, seed=1))
    assert forwards == [True, True, True, False]


def test_backward_hook_gets_the_scaled_loss():
    """With ``scaler=`` the hook receives ``scaler.scale(loss)``; gradients equal the default path's."""
    x, y = batch(6, seed=1)
    ref_model = tiny_model()
    make_step(ref_model, 2, scaler=torch.amp.GradScaler("cpu", init_scale=8.0))(x, y)
    model = tiny_model()
    rec = Recorder()
    step = make_step(model, 2, scaler=torch.amp.GradScaler("cpu", init_scale=8.0), backward=rec.backward)
    losses = step(x, y)
    assert rec.calls[0][0] == pytest.approx(8.0 * losses["main"])
    for name, grad in grads(ref_model).items():
        assert torch.equal(grads(model)[name], grad), name


def test_from_config_passes_the_hooks_on():
    """``from_config`` passes the hooks on; a step built from a recipe section calls them the same way."""
    rec = Recorder()
    model = tiny_model()
    ed = st.ElasticDepth(copy.deepcopy(model))
    cfg = type("STSection", (), dict(num_subnets=2, sampling="ordered", ranges=None, kl_norm="layer"))()
    step = st.StimulativeStep.from_config(cfg, ed, backward=rec.backward, no_sync=rec.no_sync, seed=1)
    step(*batch(6, seed=1))
    assert [flag for _, flag in rec.calls] == [True, True, False]
