"""One epoch of training and the evaluation between epochs.

``train_one_epoch`` runs the ``StimulativeStep`` (``st.num_subnets=0`` is common training through the same code
path) on every batch, then gradient clipping, ``optimizer.step()``, the per-iteration LR step and the EMA update,
and returns the epoch's record. A NaN/inf stops it at the step where it is seen: the loss (already on the host)
at every step, the weights and BatchNorm statistics every ``log_every`` steps and at the end of the epoch. ``evaluate_epoch`` measures the full network, the ``eval_depths`` sub-networks
and the EMA model, with BatchNorm re-estimation on ``bn_recal_images`` training images (on a copy of the
buffers), without touching the training RNG.

Console: a tqdm bar per epoch (loss, accuracy, img/s) on a terminal only (off when stdout is not a TTY or with
``TQDM_DISABLE=1``).
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.elastic import ElasticDepth
from ..core.evaluation import evaluate_depth
from ..core.step import NonFiniteLossError
from .config import Config
from .log import MetricsLog, subnet_metric
from .runtime import Runtime
from .state import TrainingState

__all__ = ["CrossEntropyWithAccuracy", "train_one_epoch", "evaluate_epoch", "seed_epoch", "all_finite",
           "stop_message"]

_NON_FINITE_MODEL = "the weights or BatchNorm statistics contain NaN/inf; lower the learning rate"


class CrossEntropyWithAccuracy:
    """The main-network criterion; also counts correct top-1 predictions (on device, no sync)."""

    def __init__(self, label_smoothing: float, device: torch.device):
        self.label_smoothing = label_smoothing
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.correct += (logits.detach().argmax(-1) == y).sum()
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch (every device) from (seed, epoch, rank)."""
    s = (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def all_finite(model: nn.Module) -> bool:
    """Parameters and floating buffers (BN running statistics overflow before the loss does) are finite (one
    device sync)."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def stop_message(run_dir: Path, epoch: int, step: int, reason: str) -> str:
    last = run_dir / "last.pt"
    kept = f"{last} keeps the last good epoch" if last.exists() else "no checkpoint was written"
    return f"training stopped at epoch {epoch}, step {step}: {reason}; {kept}"


def train_one_epoch(cfg: Config, runtime: Runtime, state: TrainingState, forward: nn.Module, batches,
                    criterion: CrossEntropyWithAccuracy, epoch: int, skip_batches: int = 0,
                    log: MetricsLog | None = None) -> tuple[dict[str, Any], bool]:
    """Train ``epoch`` (0-based) on ``batches``, skipping the first ``skip_batches`` (a resumed epoch).

    Returns:
        (the epoch's record, whether ``max_steps`` stopped it). The record holds ``epoch``, ``step``, ``lr``,
        ``kl_weight``, ``train_loss``/``_main``/``_subnet``, ``train_acc``, ``img_per_s``, ``epoch_time_s`` (wall),
        ``epoch_cpu_s`` (this process's CPU time: what the epoch cost, little moved by other jobs on a shared
        machine) and ``partial`` when the epoch was cut short.

    Raises:
        NonFiniteLossError: a NaN/inf loss, weight or BatchNorm statistic.
    """
    from tqdm.auto import tqdm

    step, optimizer, scheduler, scaler, ema = state.step, state.optimizer, state.scheduler, state.scaler, state.ema
    main = runtime.is_main
    run_dir = cfg.run_dir
    steps_per_epoch = len(batches)
    batches.set_epoch(epoch)
    if not skip_batches:
        seed_epoch(cfg.seed, epoch, runtime.dist.rank)
    step.set_epoch(epoch, cfg.epochs)
    forward.train()
    criterion.correct.zero_()
    sum_main = sum_sub = 0.0
    seen = batches_done = 0
    stopped = False
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=None if main and not os.environ.get("TQDM_DISABLE") else True, dynamic_ncols=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, (x, y) in enumerate(bar):
        batches_done = i + 1
        if i < skip_batches:
            continue
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            losses = step(x, y)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(stop_message(run_dir, epoch + 1, state.global_step + 1, str(err))) from None
        if cfg.optim.clip_grad > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(state.model)
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        if not math.isfinite(losses["loss"]):
            raise NonFiniteLossError(stop_message(run_dir, epoch + 1, state.global_step,
                                                  f"the loss is {losses['loss']}; lower the learning rate"))
        if state.global_step % cfg.log_every == 0 and not all_finite(state.model):
            raise NonFiniteLossError(stop_message(run_dir, epoch + 1, state.global_step, _NON_FINITE_MODEL))
        n = y.shape[0]
        seen += n
        sum_main += losses["main"] * n
        sum_sub += losses["subnet"] * n
        if main and state.global_step % cfg.log_every == 0:
            rate = seen * runtime.dist.world_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{losses['loss']:.3f}", acc=f"{100 * int(criterion.correct) / seen:.1f}",
                            img_s=f"{rate:.0f}", refresh=False)
            if log is not None:
                log.add_step_scalars(state.global_step, {"loss": losses["loss"], "main": losses["main"],
                                                         "lr": optimizer.param_groups[0]["lr"]})
        if log is not None and step.last_stats is not None:
            log.add_step_stats(state.global_step, epoch + 1, losses["main"], step.last_stats)
        if cfg.max_steps and state.global_step >= cfg.max_steps:
            stopped = True
            break
    bar.close()
    runtime.synchronize()
    train_time, cpu_time = time.perf_counter() - t0, time.process_time() - c0
    total_main, total_sub, correct, count = runtime.all_reduce([sum_main, sum_sub, float(criterion.correct),
                                                                 float(seen)])
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": state.global_step, "lr": optimizer.param_groups[0]["lr"],
        "kl_weight": step.active_kl_weight,
        "train_loss": (total_main + total_sub) / count,
        "train_loss_main": total_main / count, "train_loss_subnet": total_sub / count,
        "train_acc": 100 * correct / count,
        "img_per_s": count / max(train_time, 1e-9), "epoch_time_s": train_time, "epoch_cpu_s": cpu_time,
    }
    if stopped and batches_done < steps_per_epoch:
        record["partial"] = True
    if not all_finite(state.model):
        raise NonFiniteLossError(stop_message(run_dir, epoch + 1, state.global_step, _NON_FINITE_MODEL))
    return record, stopped



def evaluate_epoch(ed: ElasticDepth, eval_depths: list, test, train, bn_images: int, device: torch.device,
                   amp_dtype: torch.dtype | None = None, ema_ed: ElasticDepth | None = None) -> dict[str, float]:
    """Full network, eval sub-networks and EMA on the test set; BN re-estimation on a copy of the buffers.

    The global RNG state is restored afterwards so that evaluating never changes the training trajectory.
    """
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        r = evaluate_depth(ed, None, test, train, bn_images, device=device, amp_dtype=amp_dtype)
        out["test_acc"], out["test_loss"] = r["acc"], r["loss"]
        for d in eval_depths:
            r = evaluate_depth(ed, d, test, train, bn_images, device=device, amp_dtype=amp_dtype)
            out[subnet_metric(d)] = r["acc"]
        if ema_ed is not None:
            r = evaluate_depth(ema_ed, None, test, train, bn_images, device=device, amp_dtype=amp_dtype)
            out["ema_test_acc"] = r["acc"]
    return out
