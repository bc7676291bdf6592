"""``train(cfg)``: the wiring of one training run (CT, ST or ST++) on CPU, one GPU or DDP.

Rank 0 first checks, locks and prepares the run directory (``rundir.open_run_dir``: a resume whose config the
checkpoint cannot continue, a second writer or a directory holding another run is refused before anything is
written). It builds data, model, optimizer, schedule and the recipe's ``StimulativeStep`` from a ``Config``,
resumes when asked, and then per epoch: ``loop.train_one_epoch``, every ``eval_every`` epochs (and at the end)
``loop.evaluate_epoch``, ``last.pt`` (then ``best.pt`` on the best full-network accuracy) written atomically,
``metrics.jsonl``/``.csv``; at the end ``training.png``. Resuming gives the same weights as an uninterrupted
run (on CPU): see ``state.py``.

DDP: ``torchrun --nproc_per_node N -m stimulative train recipe.yaml``; ``batch_size`` is the global batch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..core.droppath import set_drop_path
from ..core.elastic import ElasticDepth
from ..core.exits import vision_prefix_exits
from ..core.sampling import SampleSpace
from ..core.step import StimulativeStep, prefix_step_applies
from ..data import build_data
from .checkpoint import load_checkpoint, resume_path, save_checkpoint
from .config import Config, ConfigError, config_to_dict, save_config
from .log import MetricsLog, console, format_record, plot_training_curves
from .loop import CrossEntropyWithAccuracy, evaluate_epoch, train_one_epoch
from .model import build_model, elastic
from .optim import build_optimizer, build_scheduler
from .rundir import RunStart, open_run_dir
from .runtime import Runtime
from .state import SavedRun, TrainingState

__all__ = ["train"]


def train(cfg: Config) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns a summary.

    Args:
        cfg: the run configuration (``stimulative.load_config``).

    Returns:
        ``{"run_dir", "epochs", "step", "best_acc", "final", "checkpoint"}``: ``final`` is the last epoch's
        metrics record (``test_acc``, ``test_acc_d<depths>``, ``train_loss`` ...).

    Raises:
        NonFiniteLossError: a NaN/inf loss; ``last.pt`` keeps the last good epoch.
        RunDirError: the run directory is read-only, in use by another run, or holds another run.
        ConfigError: a resume with a config the checkpoint cannot continue (``train.resume``).

    Example:
        >>> import stimulative as st
        >>> cfg = st.load_config(None, ["data.name=synthetic", "model.name=cifar_resnet_tiny", "epochs=1",
        ...                             "out_dir=/tmp/st-doc", "st.num_subnets=1"])
        >>> summary = train(cfg)   # doctest: +SKIP
        >>> sorted(summary)        # doctest: +SKIP
        ['best_acc', 'checkpoint', 'epochs', 'final', 'run_dir', 'step']
    """
    runtime = Runtime.start(cfg)
    start = None
    try:
        start = runtime.main_first(lambda: open_run_dir(cfg, runtime.device))
        return _train(cfg, runtime, start)
    finally:
        if start is not None:
            start.lock.release()
        runtime.close()


def _train(cfg: Config, runtime: Runtime, start: RunStart | None) -> dict[str, Any]:
    device, main, run_dir, world = runtime.device, runtime.is_main, cfg.run_dir, runtime.dist.world_size
    for note in start.notes if start is not None else []:
        console(note)
    data = build_data(cfg.data, cfg.batch_size // world, cfg.eval_batch_size, seed=cfg.seed,
                      rank=runtime.dist.rank, world_size=world, device=device)
    num_classes = _num_classes(cfg, data.num_classes)
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has fewer images than one batch ({cfg.batch_size}); lower batch_size")
    source = start.source if start is not None else resume_path(cfg)
    ckpt = start.checkpoint if start is not None else None
    if source is not None and ckpt is None:  # ranks > 0 read the checkpoint rank 0 checked
        ckpt = load_checkpoint(source, map_location=device)
    saved_classes = SavedRun.of(ckpt).num_classes if ckpt is not None else None
    if saved_classes and saved_classes != num_classes:
        raise ConfigError(f"cannot resume {str(source)!r}: the checkpoint has {saved_classes} classes, the data "
                          f"{cfg.data.name!r} has {num_classes}")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes, pretrained=cfg.model.pretrained)
    ed = elastic(model, cfg)
    if cfg.st.num_subnets and ed.full_depths == ed.min_depths:
        raise ConfigError(f"model {cfg.model.name!r} has one block per stage ({ed.full_depths}): there is no "
                          "sub-network to train; use st.num_subnets=0 (CT)")
    if cfg.model.drop_path:  # stochastic depth / LayerDrop: the peers, alone or combined with ST
        set_drop_path(ed, cfg.model.drop_path, cfg.model.drop_path_schedule, mode=cfg.model.drop_path_mode,
                      removable_only=cfg.model.drop_path_removable_only)
    eval_depths = _checked_depths(ed, cfg.eval_depths)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    ema_ed = elastic(ema.module, cfg) if ema is not None else None
    # a skipped block (a sub-network, or a drop per batch) leaves parameters without gradient in DDP
    skips = cfg.st.num_subnets > 0 or (cfg.model.drop_path > 0 and cfg.model.drop_path_mode == "batch")
    forward = runtime.wrap(model, cfg.compile, find_unused_parameters=skips)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    criterion = CrossEntropyWithAccuracy(cfg.optim.label_smoothing, device)
    space = SampleSpace.for_model(ed, cfg.st.sampling, ranges=cfg.st.ranges, seed=cfg.seed,
                                  depths=cfg.st.depths)
    # (not under torch.compile: the exits hook the blocks at every step, which a compiled graph would not see)
    exits = vision_prefix_exits(ed) if cfg.st.prefix_exits and cfg.st.num_subnets and not cfg.compile else None
    step = StimulativeStep.from_config(cfg.st, ed, space, model=None if forward is model else forward,
                                       criterion=criterion, scaler=scaler, seed=cfg.seed + 1,
                                       stats_every=cfg.stats_every, exits=exits)
    if exits is not None and prefix_step_applies(space, cfg.st.min_input_scale, cfg.st.subnet_fraction,
                                                 cfg.st.project_conflicts) and runtime.is_main:
        console("sub-networks are read off the main forward (prefix exits: one forward and one backward per "
                "step; st.prefix_exits=false for separate passes)")
    state = TrainingState(model, optimizer, build_scheduler(optimizer, cfg, steps_per_epoch), step, ema, scaler,
                          steps_per_epoch)

    skip = 0
    if ckpt is not None:
        skip = state.restore(ckpt, device, source)
        ckpt = None
        if start is not None:
            start.checkpoint = None
            if start.applied:
                console(f"resume: applying {'; '.join(start.applied)}; the LR schedule follows the new config from "
                        f"step {state.global_step} (lr now {optimizer.param_groups[0]['lr']:.4g})")
    resolved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    log = _start_log(resolved, state, runtime, steps_per_epoch, source) if main else None

    record: dict[str, Any] = state.history[-1] if state.history else {}
    stopped = False
    for epoch in range(state.epoch, cfg.epochs):
        if stopped:
            break
        record, stopped = train_one_epoch(cfg, runtime, state, forward, data.train, criterion, epoch, skip, log)
        skip = 0
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or stopped:
            t1 = time.perf_counter()
            record.update(evaluate_epoch(ed, eval_depths, data.test, data.train, cfg.bn_recal_images, device,
                                         runtime.autocast, ema_ed))
            record["eval_time_s"] = time.perf_counter() - t1
        is_best = state.end_epoch(epoch, record)
        if main:
            ckpt = state.checkpoint(config_to_dict(resolved), num_classes, record, device)
            save_checkpoint(ckpt, run_dir / "last.pt")
            if is_best:
                save_checkpoint(ckpt, run_dir / "best.pt")
            del ckpt
            log.write(state.history + ([record] if record.get("partial") else []))
            console(format_record(record, cfg.epochs))

    if main:
        plot_training_curves({cfg.name: log.records}, run_dir / "training.png", title=f"{cfg.name}: "
                             f"{cfg.model.name} on {cfg.data.name}, {cfg.st.num_subnets} sub-networks/step")
        log.close()
        console(f"done: best test acc {state.best_acc:.2f}% -> {run_dir}")
    return {"run_dir": str(run_dir), "epochs": int(record.get("epoch", state.epoch)), "step": state.global_step,
            "best_acc": state.best_acc, "final": record, "checkpoint": str(run_dir / "last.pt")}


def _start_log(cfg: Config, state: TrainingState, runtime: Runtime, steps_per_epoch: int, source) -> MetricsLog:
    """Rank 0: the run directory with the resolved config.yaml, the metric files so far, one console line."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    log = MetricsLog(cfg.run_dir, tensorboard=cfg.tensorboard)
    log.write(state.history)
    log.start_steps(keep_until=state.global_step)
    what = f"resuming {source} at epoch {state.epoch + 1}" if source else "starting"
    world = f" x{runtime.dist.world_size}" if runtime.dist.enabled else ""
    console(f"{what}: {cfg.model.name} on {cfg.data.name} ({cfg.model.num_classes} classes), {steps_per_epoch} "
            f"steps/epoch x {cfg.epochs} epochs, ST sub-networks/step {cfg.st.num_subnets}, device "
            f"{runtime.device}{world}, run dir {cfg.run_dir}")
    return log


def _num_classes(cfg: Config, data_classes: int) -> int:
    if cfg.model.num_classes and cfg.model.num_classes != data_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset {cfg.data.name!r} has "
                         f"{data_classes} classes; leave model.num_classes null")
    return cfg.model.num_classes or data_classes


def _checked_depths(ed: ElasticDepth, depths: list) -> list[list]:
    out = [list(d) for d in depths]
    for d in out:
        try:
            ed.block_modes(d)
        except ValueError as err:
            raise ValueError(f"eval_depths entry {d}: {err}") from None
    return out
