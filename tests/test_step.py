"""StimulativeStep: gradients equal hand-computed losses, exact number of sub-networks, BN freezing, smaller
inputs from the original batch, AMP/GradScaler/channels_last, non-finite losses, a short training run."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, batch, hand_forward_cifar, randomize_bn

import stimulative as st
from stimulative.core.elastic import RUN
from stimulative.core.step import random_input_size, resize_input
from stimulative.data import build_data
from stimulative.train.config import DataConfig


def tiny_model(seed: int = 0, dtype=torch.float32, shortcut: str = "A"):
    torch.manual_seed(seed)
    return randomize_bn(st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES, shortcut=shortcut)).to(dtype)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------------------
# gradients == hand-computed losses
# ------------------------------------------------------------------------------------------------------------

def hand_norm(z: torch.Tensor, norm: str, amplitude, teacher: torch.Tensor) -> torch.Tensor:
    if norm == "plain":
        return z
    if norm == "layer":
        out = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-7)
        amp = teacher.std(-1, unbiased=False, keepdim=True) if amplitude == "adaptive" else amplitude
    else:
        out = z / z.norm(dim=-1, keepdim=True)
        amp = teacher.std(-1, unbiased=False, keepdim=True) * z.shape[-1] ** 0.5 if amplitude == "adaptive" \
            else amplitude
    return out * amp


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    p = torch.softmax(teacher / temperature, -1)
    log_q = torch.log_softmax(student / temperature, -1)
    return (p * (p.log() - log_q)).sum(-1).mean() * temperature**2


CASES = {
    # id: (space kind, StimulativeStep options)
    "ct_n0": ("ordered", dict(num_subnets=0)),
    "plain_n1": ("ordered", dict(num_subnets=1)),
    "plain_n3_T2_w05": ("ordered", dict(num_subnets=3, temperature=2.0, kl_weight=0.5)),
    "layer_amp3_n3": ("ordered", dict(num_subnets=3, kl_norm="layer", amplitude=3.0)),
    "layer_adaptive_n2_small_inputs": ("ordered", dict(num_subnets=2, kl_norm="layer", amplitude="adaptive",
                                                       min_input_scale=0.5)),
    "l2_amp2_n3_small_inputs": ("ordered", dict(num_subnets=3, kl_norm="l2", amplitude=2.0, min_input_scale=0.5)),
    "layer_amp3_normalize_main_n2": ("ordered", dict(num_subnets=2, kl_norm="layer", amplitude=3.0,
                                                     normalize_main=True)),
    "raw_n3": ("raw", dict(num_subnets=3, kl_norm="layer", amplitude=2.0)),
    "stochastic_n3_small_inputs": ("stochastic", dict(num_subnets=3, min_input_scale=0.6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_equal_hand_computed_losses(case):
    kind, options = CASES[case]
    model = tiny_model(dtype=torch.float64).train()
    reference = copy.deepcopy(model)  # unpatched: the hand computation never goes through ElasticDepth
    ed = st.ElasticDepth(model)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, kind, seed=3), seed=4, **options)
    x, y = batch(6, dtype=torch.float64)
    losses = step(x, y)
    n = options["num_subnets"]
    assert len(step.last_configs) == len(step.last_sizes) == n
    if options.get("min_input_scale", 1.0) < 1:
        assert any(size != (32, 32) for size in step.last_sizes), "the seed should draw a smaller input"

    # the same losses by hand, one backward
    norm, amplitude = options.get("kl_norm", "plain"), options.get("amplitude", 1.0)
    temperature, weight = options.get("temperature", 1.0), options.get("kl_weight", 1.0)
    logits = reference(x)
    main_logits = hand_norm(logits, norm, amplitude, logits.detach()) if options.get("normalize_main") else logits
    main = F.cross_entropy(main_logits, y)
    teacher = logits.detach()
    total, subnet = main, 0.0
    for config, size in zip(step.last_configs, step.last_sizes):
        xk = x if size == (32, 32) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        student = hand_forward_cifar(reference, config, xk)
        loss_k = weight * hand_kl(hand_norm(student, norm, amplitude, teacher),
                                  hand_norm(teacher, norm, amplitude, teacher), temperature)
        total = total + loss_k
        subnet += loss_k.item()
    total.backward()

    assert losses["main"] == pytest.approx(main.item(), rel=1e-10)
    assert losses["subnet"] == pytest.approx(subnet, rel=1e-8, abs=1e-12)
    assert losses["loss"] == pytest.approx(main.item() + subnet, rel=1e-8)
    got, expected = grads(model), grads(reference)
    assert set(got) == set(expected) == {name for name, _ in model.named_parameters()}
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-8, atol=1e-11), name
    # and the sub-networks really contributed (the comparison can fail)
    if n > 0 and subnet > 1e-6:
        main_only = tiny_model(dtype=torch.float64).train()
        F.cross_entropy(main_only(x), y).backward()
        assert any(not torch.allclose(got[k], v.grad, rtol=1e-6) for k, v in main_only.named_parameters())


@pytest.mark.parametrize("n", [0, 1, 3, 6])
def test_exact_number_of_subnet_forwards(n):
    model = tiny_model().train()
    ed = st.ElasticDepth(model)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[-1]))
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=n, seed=0)
    x, y = batch(4)
    for _ in range(2):
        calls.clear()
        step(x, y)
        assert len(calls) == 1 + n
        assert len(step.last_configs) == n
    # the functional form too
    calls.clear()
    st.stimulative_step(ed, st.SampleSpace.for_model(ed, seed=0), x, y, num_subnets=n)
    assert len(calls) == 1 + n


def _bn_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("freeze", [True, False])
def test_subnet_passes_and_bn_running_stats(freeze):
    model = tiny_model().train()
    main_only = copy.deepcopy(model)
    ed = st.ElasticDepth(model)
    x, y = batch(8)
    with torch.no_grad():
        main_only(x)  # what the main pass alone does to the running statistics
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=3, freeze_subnet_bn=freeze,
                              min_input_scale=0.5, seed=0)
    step(x, y)
    after, expected = _bn_state(model), _bn_state(main_only)
    if freeze:
        for k in expected:
            assert torch.equal(after[k], expected[k]), k
    else:
        assert after["bn1.num_batches_tracked"].item() == 4  # the stem runs in all 1 + 3 passes
        assert not torch.allclose(after["bn1.running_mean"], expected["bn1.running_mean"])
    # BN modules are left tracking statistics either way
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# ------------------------------------------------------------------------------------------------------------
# smaller inputs
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.43, 0.5, 0.9, 1.0])
def test_random_input_size_bounds(scale):
    import math
    import random

    rng = random.Random(0)
    sizes = [random_input_size(32, 32, scale, rng) for _ in range(600)]
    lo = math.floor(32 * scale)
    assert all(lo <= h <= 32 and h == w for h, w in sizes)
    assert {h for h, _ in sizes} == set(range(lo, 33))  # every size in range is drawn
    h, w = random_input_size(32, 48, 0.5, random.Random(1))
    assert w == round(48 * h / 32)
    with pytest.raises(ValueError, match="min_input_scale"):
        random_input_size(32, 32, 0.0, rng)


def test_subnet_inputs_are_resized_from_the_original_batch():
    model = tiny_model().train()
    ed = st.ElasticDepth(model)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=4, min_input_scale=0.5,
                              seed=1)
    x, y = batch(4)
    x_before = x.clone()
    step(x, y)
    assert torch.equal(x, x_before)  # the caller's batch is not modified
    assert torch.equal(seen[0], x)  # the main network sees the batch itself
    sizes = step.last_sizes
    assert len({s for s in sizes if s != (32, 32)}) >= 2, sizes
    for xk, size in zip(seen[1:], sizes):
        assert tuple(xk.shape[-2:]) == size
        assert torch.equal(xk, resize_input(x, size))
        assert torch.allclose(xk, F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    # resizing an already resized input would have given something else
    (a, b) = [s for s in sizes if s != (32, 32)][:2]
    assert not torch.allclose(resize_input(resize_input(x, a), b), resize_input(x, b), atol=1e-3)


def _vit(**kwargs):
    torch.manual_seed(0)
    return st.create_model("timm/vit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=32, patch_size=8,
                           depth=2, **kwargs).train()


def test_fixed_size_model_rejects_smaller_inputs_clearly():
    model = _vit()
    ed = st.ElasticDepth(model)
    x, y = batch(2)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=3, min_input_scale=0.5,
                              seed=0)
    with pytest.raises(ValueError, match="min_input_scale=1.0") as info:
        step(x, y)
    assert "dynamic_img_size" in str(info.value) and "sub-network input" in str(info.value)
    assert all(m == RUN for row in ed.current_modes() for m in row)  # depth restored
    model.zero_grad()
    losses = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=3, min_input_scale=1.0)(x, y)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # a ViT built with a dynamic (padded) input size accepts the smaller inputs
    model = _vit(dynamic_img_size=True, dynamic_img_pad=True)
    ed = st.ElasticDepth(model)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=3, min_input_scale=0.5, seed=0)
    step(x, y)
    assert any(s != (32, 32) for s in step.last_sizes)


# ------------------------------------------------------------------------------------------------------------
# precision, scaler, memory format
# ------------------------------------------------------------------------------------------------------------

def _flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten().float() for _, v in sorted(g.items())])


def test_bf16_autocast():
    x, y = batch(8)
    results = {}
    for amp in (False, True):
        model = tiny_model().train()
        ed = st.ElasticDepth(model)
        step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=2, kl_norm="layer",
                                  amplitude="adaptive", min_input_scale=0.5, seed=0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            losses = step(x, y)
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
        g = grads(model)
        assert len(g) == len(list(model.parameters()))
        assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in g.values())
        results[amp] = (losses, _flat(g))
    # bf16 gradients point the same way as fp32 ones
    cos = F.cosine_similarity(results[True][1], results[False][1], dim=0)
    assert cos > 0.95, cos
    assert results[True][0]["main"] == pytest.approx(results[False][0]["main"], rel=0.05)


class FakeScaler:
    """The part of the GradScaler interface StimulativeStep uses: ``scale(loss)``."""

    def __init__(self, factor: float):
        self.factor = factor
        self.calls = 0

    def scale(self, loss):
        self.calls += 1
        return loss * self.factor


def _scaler_params():
    params = [pytest.param(lambda: FakeScaler(256.0), id="fake")]
    if hasattr(torch.amp, "GradScaler"):
        try:
            torch.amp.GradScaler("cpu", init_scale=256.0)
            params.append(pytest.param(lambda: torch.amp.GradScaler("cpu", init_scale=256.0), id="torch_cpu"))
        except (TypeError, RuntimeError, ValueError):
            pass
    return params


@pytest.mark.parametrize("make_scaler", _scaler_params())
def test_grad_scaler_scales_every_backward(make_scaler):
    x, y = batch(4)
    unscaled, scaled = tiny_model(), tiny_model()
    for model, scaler in ((unscaled, None), (scaled, make_scaler())):
        ed = st.ElasticDepth(model.train())
        step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=3, scaler=scaler, seed=0)
        step(x, y)
        if isinstance(scaler, FakeScaler):
            assert scaler.calls == 4
    g_unscaled, g_scaled = grads(unscaled), grads(scaled)
    for k in g_unscaled:
        assert torch.allclose(g_scaled[k], 256.0 * g_unscaled[k], rtol=1e-5, atol=1e-6), k
    if isinstance(scaler, torch.amp.GradScaler):
        opt = torch.optim.SGD(scaled.parameters(), lr=0.1)
        scaler.unscale_(opt)
        for k, p in scaled.named_parameters():
            assert torch.allclose(p.grad, g_unscaled[k], rtol=1e-5, atol=1e-7), k
        scaler.step(opt)
        scaler.update()


def test_channels_last():
    x, y = batch(4)
    results = []
    for channels_last in (False, True):
        model = tiny_model(shortcut="B").train()
        xin = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        ed = st.ElasticDepth(model)
        step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=2, min_input_scale=0.5,
                                  kl_norm="layer", seed=0)
        results.append((step(xin, y), grads(model), step.last_configs))
    (l0, g0, c0), (l1, g1, c1) = results
    assert c0 == c1
    assert l0["loss"] == pytest.approx(l1["loss"], rel=1e-4)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-3, atol=1e-5), k


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------

def test_nan_main_loss_raises_before_backward():
    model = tiny_model().train()
    ed = st.ElasticDepth(model)
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=2)
    with pytest.raises(st.NonFiniteLossError, match="main network") as info:
        step(*batch(4))
    assert isinstance(info.value, FloatingPointError)
    assert all(p.grad is None for p in model.parameters())


def test_nan_subnet_loss_raises_before_its_backward_and_restores_depth():
    model = tiny_model().train()
    reference = copy.deepcopy(model)
    ed = st.ElasticDepth(model)
    calls = []

    def poison_second_call(module, args, out):
        calls.append(1)
        return out * float("nan") if len(calls) == 2 else out

    model.register_forward_hook(poison_second_call)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), num_subnets=3)
    x, y = batch(4)
    with pytest.raises(st.NonFiniteLossError, match="sub-network"):
        step(x, y)
    assert all(m == RUN for row in ed.current_modes() for m in row)
    # only the main backward happened
    F.cross_entropy(reference(x), y).backward()
    for k, v in grads(reference).items():
        assert torch.allclose(dict(model.named_parameters())[k].grad, v, atol=1e-7), k


def test_invalid_options():
    model = tiny_model()
    ed = st.ElasticDepth(model)
    space = st.SampleSpace.for_model(ed)
    for bad, match in [(dict(kl_norm="kl-"), "valid choices"), (dict(loss="hinge"), "valid choices"),
                       (dict(num_subnets=-1), "num_subnets"), (dict(num_subnets=1.5), "num_subnets"),
                       (dict(min_input_scale=0.0), "min_input_scale"), (dict(min_input_scale=1.5), "min_input_scale")]:
        with pytest.raises(ValueError, match=match):
            st.StimulativeStep(ed, space, **bad)
    with pytest.raises(ValueError, match="do not match"):
        st.StimulativeStep(ed, st.SampleSpace.ordered([3, 3, 3]))


# ------------------------------------------------------------------------------------------------------------
# a short training run
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    dict(num_subnets=0),
    dict(num_subnets=3, kl_norm="layer", amplitude="adaptive", min_input_scale=0.5),
    dict(num_subnets=2, kl_norm="layer", amplitude=1.0, min_input_scale=0.5),
], ids=["ct", "stpp_adaptive", "stpp_amp1"])
def test_training_lowers_the_loss(options):
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet_tiny", num_classes=10).train()
    ed = st.ElasticDepth(model)
    data = build_data(DataConfig(name="synthetic", train_subset=480), batch_size=16, eval_batch_size=64, seed=0)
    step = st.StimulativeStep(ed, st.SampleSpace.for_model(ed, seed=0), seed=0, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    history = []
    for x, y in data.train:  # 30 batches
        history.append(step(x, y)["main"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert len(history) == 30
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_bn_recalibration_weights_every_image_alike():
    # a short last batch (1 image after 4) counts as one image, not as a whole batch
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.3)).eval()
    x = torch.randn(5, 3, 4, 4) + torch.arange(5.0).view(5, 1, 1, 1)
    assert st.recalibrate_bn(model, [x[:4], x[4:]], num_images=5) == 5
    bn = model[0]
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.3 and not model.training  # momentum and eval mode restored


def test_stimulative_step_declares_every_step_option_with_the_same_default():
    """``StimulativeStep`` repeats ``StepOptions``' fields (a dataclass users build with keywords) and passes them on
    as a ``StepOptions`` each call: the two lists must not drift apart, in names, defaults or documented ``Args``."""
    step_fields = {f.name: f for f in dataclasses.fields(st.StimulativeStep)}
    for option in dataclasses.fields(st.StepOptions):
        assert option.name in step_fields, option.name
        assert step_fields[option.name].default == option.default, option.name
        for cls in (st.StepOptions, st.StimulativeStep):
            assert f"        {option.name}:" in cls.__doc__, (cls.__name__, option.name)
