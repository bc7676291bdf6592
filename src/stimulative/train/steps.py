"""The loop of a run counted in optimizer steps (language models): the step, validation every ``eval_every``
steps and at the end, the checkpoint after each validation.

``train_steps`` is the step-counted twin of ``loop.train_one_epoch``: per optimizer step the task's
``run_step(i)`` (its batch of step ``i``, forward and backward: the ``StimulativeStep`` or another step), then
gradient clipping, ``optimizer.step()``, the per-iteration LR step; a NaN/inf loss stops the run at once, and
NaN/inf weights at the next ``log_every`` step, with ``last.pt`` keeping the last validated step. Every
``eval_every`` steps and at the end (``total`` or ``stop_at``) the record (``step``, ``epoch``, ``lr``,
``train_loss``/``_main``/``_subnet`` averaged since the last record, the task's ``evaluate(step)`` metrics,
``eval_time_s``, ``train_time_s``, ``train_cpu_s``, ``wall_s`` and the throughput) is appended to ``state.history`` and
``save(record)`` writes the checkpoint and the metric files. Console: one line per ``log_every`` steps and one
per validation (``describe(record)``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.step import NonFiniteLossError
from .log import console
from .loop import all_finite
from .state import TrainingState

__all__ = ["StepClock", "train_steps"]

_NON_FINITE_MODEL = "the weights contain NaN/inf; lower the learning rate"


@dataclass
class StepClock:
    """Seconds spent in the training steps (``train_s``), the process's CPU seconds in them (``cpu_s``: what the
    steps cost, little moved by other jobs on a shared machine; ``None`` once a run resumed from a checkpoint that did
    not keep it) and all seconds (``wall_s``), carried across resumes."""

    train_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float | None = 0.0


def _stopped(run_dir: Path, step: int, reason: str) -> str:
    last = run_dir / "last.pt"
    kept = f"{last} keeps the last validated step" if last.exists() else "no checkpoint was written"
    return f"training stopped at step {step}: {reason}; {kept}"


def train_steps(state: TrainingState, run_step: Callable[[int], dict[str, float]], *, total: int, stop_at: int,
                steps_per_epoch: int, clip_grad: float, eval_every: int, log_every: int, run_dir: Path,
                evaluate: Callable[[int], dict[str, Any]], save: Callable[[dict[str, Any]], None],
                describe: Callable[[dict[str, Any]], str], units_per_step: int, unit: str = "tokens",
                clock: StepClock | None = None, save_every: int = 0) -> dict[str, Any]:
    """Train from ``state.global_step`` to ``stop_at`` (see the module docstring); returns the last record.

    Args:
        state: the run's ``TrainingState`` (model, optimizer, scheduler; ``global_step`` where to start).
        run_step: ``run_step(i)`` -> the losses of step ``i`` (``loss``, ``main``, ``subnet``), backward done; a run
            without a main loss (an exit adapter on a frozen model) leaves ``main`` out, and its records hold
            ``train_loss_main: None`` (not a flat 0 that reads as a perfect fit).
        total: the run's length in steps (the schedule's); ``stop_at``: where this start stops (``max_steps``).
        steps_per_epoch: steps that cover the training data once (``epoch`` in the records).
        units_per_step: what one step consumes (tokens), for the ``<unit>_per_s`` throughput.
        clock: the times so far (a resumed run's); updated in place.
        save_every: also write the checkpoint every this many steps between validations (0: at validations only),
            so that a run stopped without warning loses at most that many steps; a run resumed from such a
            checkpoint averages its next record's training loss over the steps since the resume.

    Raises:
        NonFiniteLossError: a NaN/inf loss or weight.
    """
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    clock = clock if clock is not None else StepClock()
    sums = {"loss": 0.0, "main": 0.0, "subnet": 0.0}
    count, last_log = 0, time.perf_counter()
    record: dict[str, Any] = state.history[-1] if state.history else {}
    model.train()
    t_start = time.perf_counter()
    for i in range(state.global_step, stop_at):
        t0, c0 = time.perf_counter(), time.process_time()
        losses = run_step(i)
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        clock.train_s += time.perf_counter() - t0
        if clock.cpu_s is not None:
            clock.cpu_s += time.process_time() - c0
        done = state.global_step = i + 1
        if not math.isfinite(losses["loss"]):
            raise NonFiniteLossError(_stopped(run_dir, done, f"the loss is {losses['loss']}; lower the learning rate"))
        for key in sums:  # "main" may be left out: the run has no main loss (its records say None)
            sums[key] += losses[key] if key != "main" else losses.get(key, 0.0)
        count += 1
        if done % log_every == 0:
            if not all_finite(model):
                raise NonFiniteLossError(_stopped(run_dir, done, _NON_FINITE_MODEL))
            now = time.perf_counter()
            main = f"{losses['main']:.4f}" if "main" in losses else "-"
            console(f"step {done}/{total} loss {losses['loss']:.4f} (main {main} sub "
                    f"{losses['subnet']:.4f}) lr {scheduler.get_last_lr()[0]:.3g} "
                    f"{log_every * units_per_step / (now - last_log):.0f} {unit}/s")
            last_log = now
        validate = not done % eval_every or done in (total, stop_at)
        if not validate and not (save_every and done % save_every == 0):
            continue
        # every checkpoint, with or without a validation, is of finite weights: last.pt keeps the last good one
        if not all_finite(model):
            raise NonFiniteLossError(_stopped(run_dir, done, _NON_FINITE_MODEL))
        if not validate:  # a checkpoint between validations, holding the last record
            clock.wall_s += time.perf_counter() - t_start
            t_start = time.perf_counter()
            save(record)
            continue
        t1 = time.perf_counter()
        record = {"step": done, "epoch": done / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                  "train_loss": sums["loss"] / count, "train_loss_main": sums["main"] / count if "main" in losses else None,
                  "train_loss_subnet": sums["subnet"] / count, **evaluate(done)}
        clock.wall_s += time.perf_counter() - t_start
        t_start = time.perf_counter()
        record.update({"eval_time_s": t_start - t1, "train_time_s": clock.train_s, "train_cpu_s": clock.cpu_s,
                       "wall_s": clock.wall_s, f"{unit}_per_s": done * units_per_step / max(clock.train_s, 1e-9)})
        state.history.append(record)
        state.epoch = done // steps_per_epoch
        sums, count = {k: 0.0 for k in sums}, 0
        save(record)
        console(describe(record))
    return record
