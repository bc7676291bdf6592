"""Losses: KL, KL- normalisation (scale invariance), sub-network losses, KL weight schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import stimulative as st
from stimulative.core.losses import SUBNET_LOSSES, at_least_fp32, dkd_loss, kl_weight_schedule


def _logits(seed: int, n: int = 6, c: int = 10, scale: float = 3.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, c, generator=g, dtype=dtype)


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    p = torch.softmax(teacher / temperature, -1)
    q = torch.softmax(student / temperature, -1)
    return (p * (p.log() - q.log())).sum(-1).mean() * temperature**2


def test_kl_zero_for_identical_positive_otherwise():
    s, t = _logits(0), _logits(1)
    assert st.kl_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert st.kl_loss(s, t).item() > 1e-3
    # KL is not symmetric
    assert st.kl_loss(s, t).item() != pytest.approx(st.kl_loss(t, s).item(), rel=1e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_kl_matches_hand_formula_with_temperature(temperature):
    s, t = _logits(2), _logits(3)
    got = st.kl_loss(s, t, temperature)
    assert got.dtype == torch.float64
    assert torch.allclose(got, hand_kl(s, t, temperature), rtol=1e-10, atol=1e-12)


def test_kl_temperature_squared_scaling():
    # for large T, T^2 * KL(softmax(t/T) || softmax(s/T)) -> mean_b sum_c ((t - s) - mean)^2 / (2C)  (Hinton et al.)
    s, t = _logits(4, scale=1.0), _logits(5, scale=1.0)
    d = (t - s) - (t - s).mean(-1, keepdim=True)
    limit = (d.pow(2).sum(-1) / (2 * s.shape[-1])).mean()
    assert torch.allclose(st.kl_loss(s, t, 1000.0), limit, rtol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        st.kl_loss(s, t, 0.0)


def test_kl_gradient_flows_only_to_student():
    s, t = _logits(6).requires_grad_(), _logits(7).requires_grad_()
    st.kl_loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("norm", ["layer", "l2"])
def test_kl_minus_is_invariant_to_positive_rescaling(norm):
    s, t = _logits(8), _logits(9)
    base = st.subnet_loss(s, t, norm=norm, amplitude=2.0)
    for cs, ct in [(5.0, 1.0), (1.0, 0.2), (0.3, 7.0)]:
        assert torch.allclose(st.subnet_loss(cs * s, ct * t, norm=norm, amplitude=2.0), base, rtol=1e-6)
        assert torch.allclose(st.normalize_logits(cs * s, norm, 2.0), st.normalize_logits(s, norm, 2.0), atol=1e-8)
    # plain KL depends on the logit magnitude
    plain = st.subnet_loss(s, t, norm="plain")
    assert not torch.allclose(st.subnet_loss(5.0 * s, t, norm="plain"), plain, rtol=1e-2)
    assert not torch.allclose(st.subnet_loss(s, 0.2 * t, norm="plain"), plain, rtol=1e-2)


def test_normalize_logits_values():
    z = _logits(10)
    out = st.normalize_logits(z, "layer", 3.0)
    assert torch.allclose(out.mean(-1), torch.zeros(6, dtype=z.dtype), atol=1e-10)
    assert torch.allclose(out.std(-1, unbiased=False), torch.full((6,), 3.0, dtype=z.dtype), rtol=1e-6)
    out = st.normalize_logits(z, "l2", 2.0)
    assert torch.allclose(out.norm(dim=-1), torch.full((6,), 2.0, dtype=z.dtype))
    assert st.normalize_logits(z, "plain", 5.0) is z
    # "adaptive": the normalised logits get the reference's per-sample std
    ref = _logits(11, scale=4.0)
    out = st.normalize_logits(z, "layer", "adaptive", reference=ref)
    assert torch.allclose(out.std(-1, unbiased=False), ref.std(-1, unbiased=False), rtol=1e-6)
    with pytest.raises(ValueError, match="valid choices"):
        st.normalize_logits(z, "batch")
    with pytest.raises(ValueError, match="amplitude"):
        st.normalize_logits(z, "layer", -1.0)


def test_adaptive_amplitude_keeps_the_teacher_scale():
    s, t = _logits(12), _logits(13)
    # the student's own scale does not matter, the teacher's does (through the amplitude)
    base = st.subnet_loss(s, t, norm="layer", amplitude="adaptive")
    assert torch.allclose(st.subnet_loss(4 * s, t, norm="layer", amplitude="adaptive"), base, rtol=1e-6)
    assert not torch.allclose(st.subnet_loss(s, 4 * t, norm="layer", amplitude="adaptive"), base, rtol=1e-2)


def test_low_precision_logits_are_upcast_but_fp64_is_kept():
    z = _logits(14, dtype=torch.float32)
    assert at_least_fp32(z.bfloat16()).dtype == torch.float32
    assert at_least_fp32(z.double()).dtype == torch.float64
    loss = st.subnet_loss(z.bfloat16(), z.half(), norm="layer", amplitude=1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert st.kl_loss(z.double(), z.double() + 1e-9).dtype == torch.float64


@pytest.mark.parametrize("kind", SUBNET_LOSSES)
def test_every_subnet_loss_is_finite_and_zero_when_student_equals_teacher(kind):
    t, y = _logits(15), torch.arange(6) % 10
    s = _logits(16).requires_grad_()
    loss = st.subnet_loss(s, t, y, kind=kind)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    if kind in ("kl", "mse", "dkd"):
        assert st.subnet_loss(t, t, y, kind=kind).item() == pytest.approx(0.0, abs=1e-6)
    if kind == "ce":
        assert torch.allclose(loss, F.cross_entropy(s, y))
    if kind == "soft_ce":  # soft CE = KL + entropy of the teacher
        p = torch.softmax(t, -1)
        entropy = -(p * p.log()).sum(-1).mean()
        assert torch.allclose(loss, st.kl_loss(s, t) + entropy)


def test_subnet_loss_errors():
    s, t = _logits(17), _logits(18)
    with pytest.raises(ValueError, match="valid choices"):
        st.subnet_loss(s, t, kind="hinge")
    for kind in ("ce", "dkd"):
        with pytest.raises(ValueError, match="needs the targets"):
            st.subnet_loss(s, t, kind=kind)


def test_kl_weight_schedules():
    E = 10
    assert [kl_weight_schedule("constant", e, E, 2.0) for e in (0, E / 2, E)] == [2.0, 2.0, 2.0]
    up = [kl_weight_schedule("cosine_up", e, E, 2.0) for e in (0, E / 2, E)]
    down = [kl_weight_schedule("cosine_down", e, E, 2.0) for e in (0, E / 2, E)]
    assert up == pytest.approx([0.0, 1.0, 2.0], abs=1e-12)
    assert down == pytest.approx([2.0, 1.0, 0.0], abs=1e-12)
    assert kl_weight_schedule("cosine_up", E / 4, E) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    # before start_epoch: no sub-network loss at all; from it on: the schedule
    assert kl_weight_schedule("constant", 2.9, E, 1.0, start_epoch=3) == 0.0
    assert kl_weight_schedule("constant", 3, E, 1.0, start_epoch=3) == 1.0
    assert kl_weight_schedule("cosine_down", 1, E, 1.0, start_epoch=2) == 0.0
    # beyond the end the cosine ramps are clamped
    assert kl_weight_schedule("cosine_up", 2 * E, E) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="valid choices"):
        kl_weight_schedule("linear", 0, E)


def test_dkd_uses_the_given_temperature():
    s, t, y = _logits(19), _logits(20), torch.arange(6) % 10
    assert st.subnet_loss(s, t, y, kind="dkd", temperature=2.0).item() == pytest.approx(
        dkd_loss(s, t, y, temperature=2.0).item())
    assert st.subnet_loss(s, t, y, kind="dkd", temperature=2.0).item() != pytest.approx(
        st.subnet_loss(s, t, y, kind="dkd", temperature=4.0).item())
