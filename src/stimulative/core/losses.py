"""Losses of stimulative training (docs/method.md, "The ST objective" and "KL-").

* ``kl_loss``: KL(softmax(t/T) || softmax(s/T)) * T^2, batchmean.
* ``normalize_logits``: the KL- normalisation: "layer" (layer-norm over classes, no affine, eps 1e-7) or "l2",
  times an amplitude ``a`` (a float, or "adaptive": per-sample std of the teacher logits).
* ``subnet_loss``: the sub-network loss by name: "kl" (default), "soft_ce", "ce" (ground truth, used when
  fine-tuning downstream), "mse" (between probabilities), "dkd" (decoupled KD, Zhao et al. 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "kl_loss", "normalize_logits", "subnet_loss", "dkd_loss", "kl_weight_schedule", "at_least_fp32",
    "KL_NORMS", "SUBNET_LOSSES", "KL_SCHEDULES",
]

KL_NORMS = ("plain", "layer", "layer_sg", "l2")
SUBNET_LOSSES = ("kl", "soft_ce", "ce", "mse", "dkd")
KL_SCHEDULES = ("constant", "cosine_up", "cosine_down")


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast fp16/bf16 logits to fp32 for a numerically safe loss; fp32 and fp64 stay as they are.

    (``x.float()`` would silently round fp64 logits to fp32.)
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def normalize_logits(logits: torch.Tensor, norm: str = "layer", amplitude: float | str = 1.0,
                     reference: torch.Tensor | None = None, eps: float = 1e-7) -> torch.Tensor:
    """KL- normalisation: keep only the direction of each logit vector, then scale by ``amplitude``.

    Args:
        logits: (batch, classes).
        norm: "plain" (unchanged), "layer" (zero mean, unit std over classes), "layer_sg" (the same forward
            value, but the std is treated as a constant: no gradient flows through it) or "l2" (unit L2 norm).
        amplitude: a float, or "adaptive" (per-sample std of ``reference``, detached; the reference code's
            "adaptive amplitude" variant, which keeps the teacher's own scale).
        reference: logits whose per-sample std sets the "adaptive" amplitude (the teacher's).
        eps: numerical guard (1e-7 as in the reference code).
    """
    if norm == "plain":
        return logits
    logits = at_least_fp32(logits)  # eps=1e-7 is below bf16/fp16 resolution
    if norm == "layer":
        out = F.layer_norm(logits, logits.shape[-1:], eps=eps)
    elif norm == "layer_sg":
        centred = logits - logits.mean(dim=-1, keepdim=True)
        out = centred / (centred.detach().pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    elif norm == "l2":
        out = logits / logits.norm(dim=-1, keepdim=True).clamp_min(eps)
    else:
        raise ValueError(f"unknown KL normalisation {norm!r}; valid choices: {', '.join(KL_NORMS)}")
    if amplitude == "adaptive":
        ref = logits if reference is None else reference
        amp = at_least_fp32(ref.detach()).std(dim=-1, unbiased=False, keepdim=True).clamp_min(eps).to(out.dtype)
        if norm == "l2":
            amp = amp * math.sqrt(logits.shape[-1])  # an l2-unit vector has std ~ 1/sqrt(C)
        return out * amp
    if not isinstance(amplitude, (int, float)) or amplitude <= 0:
        raise ValueError(f"amplitude must be a positive number or 'adaptive', got {amplitude!r}")
    return out * float(amplitude)


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, averaged over the batch (``batchmean``)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = at_least_fp32(teacher.detach()) / temperature
    s = at_least_fp32(student) / temperature
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean",
                    log_target=True) * temperature**2


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022, arXiv 2203.08679): TCKD*alpha + NCKD*beta."""
    t = at_least_fp32(teacher.detach()) / temperature
    s = at_least_fp32(student) / temperature
    gt = F.one_hot(target, s.shape[-1]).bool()
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)
    # binary (target vs rest) distributions
    bs = torch.stack([(ps * gt).sum(-1), (ps * ~gt).sum(-1)], -1).clamp_min(1e-8)
    bt = torch.stack([(pt * gt).sum(-1), (pt * ~gt).sum(-1)], -1).clamp_min(1e-8)
    tckd = (bt * (bt.log() - bs.log())).sum(-1).mean()
    # non-target distributions: mask the target class out
    big = 1000.0
    log_ps_nt = F.log_softmax(s - big * gt, -1)
    log_pt_nt = F.log_softmax(t - big * gt, -1)
    nckd = F.kl_div(log_ps_nt, log_pt_nt, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


def subnet_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None, *,
                kind: str = "kl", norm: str = "plain", amplitude: float | str = 1.0,
                temperature: float = 1.0) -> torch.Tensor:
    """Loss of one sub-network against the main network's detached logits (or the labels for "ce").

    With ``norm != "plain"`` both student and teacher logits are KL- normalised first (the "adaptive"
    amplitude uses the teacher's std for both).
    """
    if kind not in SUBNET_LOSSES:
        raise ValueError(f"unknown sub-network loss {kind!r}; valid choices: {', '.join(SUBNET_LOSSES)}")
    if kind == "ce":
        if target is None:
            raise ValueError("sub-network loss 'ce' needs the targets")
        return F.cross_entropy(at_least_fp32(student), target)
    teacher = teacher.detach()
    s = normalize_logits(student, norm, amplitude, reference=teacher)
    t = normalize_logits(teacher, norm, amplitude, reference=teacher)
    if kind == "kl":
        return kl_loss(s, t, temperature)
    if kind == "soft_ce":
        t, s = at_least_fp32(t), at_least_fp32(s)
        return -(F.softmax(t / temperature, -1) * F.log_softmax(s / temperature, -1)).sum(-1).mean()
    if kind == "mse":
        t, s = at_least_fp32(t), at_least_fp32(s)
        return F.mse_loss(F.softmax(s / temperature, -1), F.softmax(t / temperature, -1))
    if target is None:
        raise ValueError("sub-network loss 'dkd' needs the targets")
    return dkd_loss(s, t, target, temperature=temperature)


def kl_weight_schedule(kind: str, epoch: float, epochs: float, base: float = 1.0, start_epoch: float = 0) -> float:
    """Coefficient of the sub-network loss at ``epoch`` (fractional epochs allowed).

    "constant": base; "cosine_up": base * (1 - cos(pi * e / E)) / 2; "cosine_down": base * (1 + cos(pi * e / E)) / 2.
    Before ``start_epoch`` the weight is 0 (no sub-networks are trained).
    """
    if kind not in KL_SCHEDULES:
        raise ValueError(f"unknown KL schedule {kind!r}; valid choices: {', '.join(KL_SCHEDULES)}")
    if epoch < start_epoch:
        return 0.0
    if kind == "constant":
        return base
    frac = min(max(epoch / max(epochs, 1e-12), 0.0), 1.0)
    if kind == "cosine_up":
        return base * 0.5 * (1 - math.cos(math.pi * frac))
    return base * 0.5 * (1 + math.cos(math.pi * frac))
