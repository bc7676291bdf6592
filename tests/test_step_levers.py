"""StimulativeStep options added for the evidence work: the layer_sg KL- variant, the cost levers
(subnet_fraction, subnet_every), the recipe schedule (set_epoch / from_config) and the instrumentation
(stats_every -> last_stats, the engine's steps.jsonl)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, batch

import stimulative as st
import stimulative.train.engine as engine
from stimulative.train.config import STConfig, load_config


def tiny():
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES)
    return model, st.ElasticDepth(model)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def main_gradient(model, x, y) -> torch.Tensor:
    """The gradient of the main loss alone (a step without sub-networks) of ``model`` on (x, y)."""
    ed = st.ElasticDepth(model)
    st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths), num_subnets=0)(x, y)
    return flat_grad(model)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_layer_sg_same_value_gradient_without_the_std_path():
    z = torch.randn(5, NUM_CLASSES, dtype=torch.float64, requires_grad=True)
    a = st.normalize_logits(z, "layer", 1.0)
    b = st.normalize_logits(z, "layer_sg", 1.0)
    torch.testing.assert_close(a, b)
    w = torch.randn_like(a)
    (gb,) = torch.autograd.grad((b * w).sum(), z)
    centred = z.detach() - z.detach().mean(-1, keepdim=True)
    std = (centred.pow(2).mean(-1, keepdim=True) + 1e-7).sqrt()
    expected = (w - w.mean(-1, keepdim=True)) / std  # d/dz of (z - mean) / const
    torch.testing.assert_close(gb, expected)
    (ga,) = torch.autograd.grad((a * w).sum(), z)
    assert not torch.allclose(ga, gb)  # layer-norm also differentiates through the std


def test_subnet_fraction_trains_subnets_on_the_first_rows():
    model, ed = tiny()
    x, y = batch(8)
    ref = copy.deepcopy(model)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=3), num_subnets=2,
                              subnet_fraction=0.5, seed=0)
    step(x, y)
    got = grads(model)
    # hand-written: main CE on all 8 rows, each sub-network's KL on rows 0..3 with frozen BN statistics
    ref_ed = st.ElasticDepth(ref)
    with ref_ed.depth(None):
        logits = ref(x)
    F.cross_entropy(logits, y).backward()
    teacher = logits.detach()[:4]
    for config in step.last_configs:
        with st.frozen_bn_stats(ref), ref_ed.depth(config):
            st.kl_loss(ref(x[:4]), teacher).backward()
    expected = grads(ref)
    assert got.keys() == expected.keys()
    for k in got:
        torch.testing.assert_close(got[k], expected[k], msg=k)


def test_subnet_every_skips_subnets_on_off_steps():
    model, ed = tiny()
    x, y = batch(4)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=2, subnet_every=3)
    counts = []
    for _ in range(6):
        losses = step(x, y)
        counts.append(len(step.last_configs))
        assert (losses["subnet"] == 0.0) == (counts[-1] == 0)
    assert counts == [2, 0, 0, 2, 0, 0]


@pytest.mark.parametrize("bad", [dict(subnet_fraction=0.0), dict(subnet_fraction=1.5), dict(subnet_every=0),
                                 dict(kl_schedule="linear"), dict(kl_norm="layernorm")])
def test_bad_options_name_the_key(bad):
    _, ed = tiny()
    with pytest.raises(ValueError, match=next(iter(bad))):
        st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths), **bad)


def test_set_epoch_applies_start_epoch_and_schedule():
    _, ed = tiny()
    cfg = STConfig(num_subnets=2, kl_weight=2.0, kl_schedule="cosine_up", start_epoch=1)
    step = st.StimulativeStep.from_config(cfg, ed)
    assert step.num_subnets == 2 and step.kl_schedule == "cosine_up" and step.start_epoch == 1
    x, y = batch(4)
    step.set_epoch(0, 4)
    step(x, y)
    assert step.last_configs == [] and step.active_kl_weight == 0.0
    step.set_epoch(2, 4)
    assert step.active_kl_weight == pytest.approx(2.0 * 0.5 * (1 - torch.cos(torch.tensor(torch.pi / 2)).item()))
    losses = step(x, y)
    assert len(step.last_configs) == 2 and losses["subnet"] > 0


def test_stats_gradient_norms_are_each_pass_contribution():
    model, ed = tiny()
    x, y = batch(4)
    ref = copy.deepcopy(model)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=2, stats_every=2)
    step(x, y)
    stats = step.last_stats
    assert set(stats) >= {"grad_main", "grad_sub", "std_main", "std_sub", "loss_sub", "configs"}
    assert len(stats["grad_sub"]) == len(stats["std_sub"]) == len(stats["loss_sub"]) == 2
    total = flat_grad(model)
    main = main_gradient(ref, x, y)
    assert stats["grad_main"] == pytest.approx(float(main.norm()), rel=1e-5)
    assert stats["grad_sub"][0] > 0 and float(total.norm()) != pytest.approx(stats["grad_main"])
    assert stats["std_main"] == pytest.approx(float(ref(x).detach().std(-1, unbiased=False).mean()), rel=1e-4)
    step(x, y)
    assert step.last_stats is None  # only every 2nd call is instrumented


def test_engine_writes_and_resumes_steps_jsonl(tmp_path):
    base = ["data.name=synthetic", "model.name=cifar_resnet_tiny", "data.input_size=16", "data.train_subset=128",
            "data.test_subset=64", "batch_size=32", "eval_batch_size=64", "threads=1", "device=cpu",
            f"out_dir={tmp_path}", "name=run", "optim.lr=0.05", "st.num_subnets=2", "stats_every=2", "epochs=2"]
    engine.train(load_config(None, base + ["max_steps=5"]))
    path = tmp_path / "run" / "steps.jsonl"
    first = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 3, 5]
    assert all(len(r["grad_sub"]) == 2 and r["grad_main"] > 0 for r in first)
    # last.pt holds the partial epoch's step 5; resuming keeps steps <= 5 and continues in phase
    engine.train(load_config(None, base + ["resume=auto"]))
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 3, 5, 7]


def test_stats_cosine_of_subnet_gradient_to_main_gradient():
    model, ed = tiny()
    x, y = batch(4)
    ref = copy.deepcopy(model)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=1, stats_every=1)
    step(x, y)
    total = flat_grad(model)
    main = main_gradient(ref, x, y)
    expected = float(F.cosine_similarity(total - main, main, dim=0))
    assert step.last_stats["cos_sub"] == [pytest.approx(expected, abs=1e-5)]


def test_project_conflicts_removes_the_opposing_component():
    model, ed = tiny()
    x, y = batch(8)
    plain, projected = copy.deepcopy(model), copy.deepcopy(model)
    # gradients of the main loss alone and of main + sub-networks (same draws: same seeds)
    st.StimulativeStep(st.ElasticDepth(plain), st.SampleSpace.ordered(ed.full_depths), num_subnets=0)(x, y)
    g_main = flat_grad(plain)
    plain.zero_grad()
    opts = dict(num_subnets=3, kl_norm="layer", amplitude="adaptive", seed=0)
    st.StimulativeStep(st.ElasticDepth(plain), st.SampleSpace.ordered(ed.full_depths, seed=1), **opts)(x, y)
    g_total = flat_grad(plain)
    step = st.StimulativeStep(st.ElasticDepth(projected), st.SampleSpace.ordered(ed.full_depths, seed=1),
                              project_conflicts=True, stats_every=1, **opts)
    step(x, y)
    got = flat_grad(projected)
    g_sub = g_total - g_main
    dot = torch.dot(g_sub, g_main)
    expected = g_main + (g_sub - dot / torch.dot(g_main, g_main) * g_main if dot < 0 else g_sub)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert step.last_stats["projected"] and dot < 0  # this seed draws a conflicting sub-network gradient
    assert torch.dot(got - g_main, g_main) >= -1e-6 * float(g_main.norm()) ** 2  # never against the main gradient


def test_project_conflicts_refuses_distributed_sync():
    import contextlib

    _, ed = tiny()
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths), num_subnets=1, project_conflicts=True,
                              no_sync=contextlib.nullcontext)
    with pytest.raises(ValueError, match="project_conflicts"):
        step(*batch(4))
