"""The training engine: one readable loop for common training (CT), ST and ST++, on CPU, one GPU or DDP.

``train(cfg)`` builds data, model, optimizer and schedule from a ``Config``, then for every batch runs a
``StimulativeStep`` (``st.num_subnets=0`` is common training through the same code path), optional gradient
clipping, ``optimizer.step()``, a per-iteration LR step and an EMA update. After every ``eval_every`` epochs
and at the end it evaluates the full network, the ``eval_depths`` sub-networks and the EMA model (with
BatchNorm re-estimation on ``bn_recal_images`` training images when > 0, on a copy of the BN buffers), then
writes ``last.pt`` (and ``best.pt`` on the best full-network accuracy) atomically, ``metrics.jsonl``/``.csv``
and, at the end, ``training.png``.

Reproducibility: data order and augmentation depend only on (seed, epoch); the global RNGs are re-seeded from
(seed, epoch, rank) at the start of every epoch; the sub-network sampler and the input-size generator carry
their state in the checkpoint. Resuming therefore gives the same weights as an uninterrupted run (on CPU).

DDP: ``torchrun --nproc_per_node N -m stimulative train recipe.yaml``; ``batch_size`` is the global batch.

Console: a tqdm bar per epoch (loss, accuracy, img/s) on a terminal only (off when stdout is not a TTY or with
``TQDM_DISABLE=1``), and one summary line per epoch always.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import FORMAT, build_model, load_checkpoint, save_checkpoint
from .config import Config, config_to_dict, save_config
from .core.elastic import ElasticDepth
from .core.evaluation import evaluate_depth
from .core.sampling import SampleSpace
from .core.step import NonFiniteLossError, StimulativeStep
from .data import build_data
from .training_log import MetricsLog, plot_training

__all__ = ["train", "build_optimizer", "build_scheduler", "resolve_device", "setup_distributed", "DistInfo",
           "amp_dtype", "depth_key", "lr_factor"]


# ----------------------------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class DistInfo:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without index -> ``cuda:<local_rank>``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a valid torch device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available on this machine; use device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Uses NCCL on CUDA and gloo on CPU. Without ``WORLD_SIZE > 1`` this returns a single-process ``DistInfo``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        initialized_here = True
    return DistInfo(rank, world, local_rank, initialized_here)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` (None = fp32). fp16 needs CUDA (it comes with a GradScaler)."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 (or none) on CPU")
        return torch.float16
    raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from ``cfg.optim``.

    With ``no_decay_bn_bias`` BatchNorm/LayerNorm weights, biases, other 1-d parameters and the model's own
    ``no_weight_decay()`` names (timm ViT: pos_embed, cls_token) get no weight decay (timm's grouping helper).

    Example:
        >>> from stimulative.config import Config
        >>> import stimulative as st
        >>> opt = build_optimizer(st.create_model("cifar_resnet_tiny", 10), Config())
        >>> [g["weight_decay"] for g in opt.param_groups]
        [0.0, 0.0005]
    """
    o = cfg.optim
    if o.no_decay_bn_bias:
        from timm.optim import param_groups_weight_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        params: Any = param_groups_weight_decay(model, o.weight_decay, no_weight_decay_list=skip)
    else:
        params = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": o.weight_decay}]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas))
    raise ValueError(f"optim.name must be sgd or adamw, got {o.name!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at iteration ``step``: linear warmup, then cosine to ``min_ratio`` or constant.

    Example:
        >>> lr_factor(0, 100, 10, "cosine", 0.0), lr_factor(10, 100, 10, "cosine", 0.0), lr_factor(100, 100, 10, "cosine", 0.0)
        (0.1, 1.0, 0.0)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Per-iteration LR schedule: "cosine" (linear warmup over ``warmup_epochs``, cosine to ``min_lr``),
    "onecycle" (``torch.optim.lr_scheduler.OneCycleLR``, warm-up fraction ``warmup_epochs/epochs`` or 0.3) or
    "constant" (after the warmup). Call ``scheduler.step()`` after every optimizer step."""
    o = cfg.optim
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    if o.schedule == "onecycle":
        pct = o.warmup_epochs / cfg.epochs if o.warmup_epochs > 0 else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=total,
                                                   pct_start=min(max(pct, 1e-3), 0.99))
    if o.schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule must be cosine, onecycle or constant, got {o.schedule!r}")
    min_ratio = o.min_lr / o.lr if o.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, total, warmup, o.schedule, min_ratio))


def depth_key(config: Any) -> str:
    """Short name of a depth config for metric keys: ``[1, 2, 3]`` -> ``"1-2-3"``."""
    return "-".join(str(v) if isinstance(v, int) else "".join(str(int(m)) for m in v) for v in config)


class _AutocastForward(nn.Module):
    """Runs the wrapped model's forward under ``torch.autocast`` (so backward runs outside autocast)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.device_type, self.dtype = device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(x)


class _CrossEntropyWithAccuracy:
    """The main-network criterion; also counts correct top-1 predictions (on device, no sync)."""

    def __init__(self, label_smoothing: float, device: torch.device):
        self.label_smoothing = label_smoothing
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.correct += (logits.detach().argmax(-1) == y).sum()
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)


def _seed_epoch(seed: int, epoch: int, rank: int, device: torch.device) -> None:
    s = (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)  # also seeds every CUDA device


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _all_finite(model: nn.Module) -> bool:
    """Parameters and floating buffers (BN running statistics overflow before the loss does) are finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _log(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------

def train(cfg: Config) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns a summary.

    Args:
        cfg: the run configuration (``stimulative.config.load_config``).

    Returns:
        ``{"run_dir", "epochs", "step", "best_acc", "final", "checkpoint"}``: ``final`` is the last epoch's
        metrics record (``test_acc``, ``test_acc_d<depths>``, ``train_loss`` ...).

    Raises:
        NonFiniteLossError: a NaN/inf loss; ``last.pt`` keeps the last good epoch.

    Example:
        >>> from stimulative.config import load_config
        >>> cfg = load_config(None, ["data.name=synthetic", "model.name=cifar_resnet_tiny", "epochs=1",
        ...                          "out_dir=/tmp/st-doc", "st.num_subnets=1"])
        >>> summary = train(cfg)   # doctest: +SKIP
        >>> sorted(summary)        # doctest: +SKIP
        ['best_acc', 'checkpoint', 'epochs', 'final', 'run_dir', 'step']
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    dinfo = setup_distributed(device)
    try:
        return _train(cfg, device, dinfo)
    finally:
        if dinfo.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, device: torch.device, dinfo: DistInfo) -> dict[str, Any]:
    main = dinfo.is_main
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast_dtype = amp_dtype(cfg.amp, device)
    if cfg.batch_size % dinfo.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {dinfo.world_size} processes")
    run_dir = cfg.run_dir

    # ---- data and model --------------------------------------------------------------------------------------
    bundle = build_data(cfg.data, cfg.batch_size // dinfo.world_size, cfg.eval_batch_size, seed=cfg.seed,
                        rank=dinfo.rank, world_size=dinfo.world_size, device=device)
    num_classes = cfg.model.num_classes or bundle.num_classes
    if cfg.model.num_classes and cfg.model.num_classes != bundle.num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset {cfg.data.name!r} has "
                         f"{bundle.num_classes} classes; leave model.num_classes null")
    steps_per_epoch = len(bundle.train)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has fewer images than one batch ({cfg.batch_size}); lower batch_size")
    torch.manual_seed(cfg.seed)
    raw = build_model(cfg, num_classes, pretrained=cfg.model.pretrained)
    ed = ElasticDepth(raw, stages=cfg.model.stages)
    eval_depths = [list(d) for d in cfg.eval_depths]
    for d in eval_depths:
        try:
            ed.block_modes(d)
        except ValueError as err:
            raise ValueError(f"eval_depths entry {d}: {err}") from None
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    raw.to(device, memory_format=memory_format)
    ema = None
    if cfg.ema > 0:
        ema = AveragedModel(raw, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        ema_ed = ElasticDepth(ema.module, stages=cfg.model.stages)
    forward: nn.Module = raw
    if autocast_dtype is not None:
        forward = _AutocastForward(forward, device.type, autocast_dtype)
    if cfg.compile:
        forward = torch.compile(forward)
    if dinfo.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.st.num_subnets > 0)

    optimizer = build_optimizer(raw, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    space = SampleSpace.for_model(ed, cfg.st.sampling, ranges=cfg.st.ranges, seed=cfg.seed)
    criterion = _CrossEntropyWithAccuracy(cfg.optim.label_smoothing, device)
    step = StimulativeStep.from_config(
        cfg.st, ed, space, model=None if forward is raw else forward, criterion=criterion, scaler=scaler,
        seed=cfg.seed + 1, stats_every=cfg.stats_every)

    # ---- resume --------------------------------------------------------------------------------------------
    start_epoch, global_step, best_acc, history, skip_batches = 0, 0, -1.0, [], 0
    resume_path = _resume_path(cfg)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, map_location=device)
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 1)))
        space.rng.setstate(_as_tuple(ckpt["space_rng"]))
        step.rng.setstate(_as_tuple(ckpt["step_rng"]))
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["step"])
        step.calls = global_step  # one call per optimizer step: keeps subnet_every / stats_every in phase
        best_acc, history = float(ckpt.get("best_acc", -1.0)), list(ckpt.get("history", []))
        skip_batches = global_step - start_epoch * steps_per_epoch
        if not 0 <= skip_batches < steps_per_epoch:
            raise ValueError(f"cannot resume {str(resume_path)!r}: it stopped at step {global_step} of epoch "
                             f"{start_epoch + 1}, which does not fit {steps_per_epoch} steps per epoch (did the "
                             "data or batch size change?)")
        if skip_batches:
            _set_rng_state(ckpt["rng"], device)
        del ckpt
    elif main and (run_dir / "last.pt").exists():
        _log(f"warning: {run_dir} already holds a run; starting fresh and overwriting it "
             "(pass resume=auto to continue it)")

    log = None
    resolved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(resolved, run_dir / "config.yaml")
        log = MetricsLog(run_dir, tensorboard=cfg.tensorboard)
        log.write(history)
        log.start_steps(keep_until=global_step)
        what = f"resuming {resume_path} at epoch {start_epoch + 1}" if resume_path else "starting"
        _log(f"{what}: {cfg.model.name} on {cfg.data.name} ({bundle.num_classes} classes), "
             f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs, ST sub-networks/step {cfg.st.num_subnets}, "
             f"device {device}{f' x{dinfo.world_size}' if dinfo.enabled else ''}, run dir {run_dir}")

    def checkpoint_dict(epochs_done: int, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": raw.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
            "config": config_to_dict(resolved), "num_classes": num_classes,
            "epoch": epochs_done, "step": global_step,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(device), "space_rng": space.rng.getstate(), "step_rng": step.rng.getstate(),
            "metrics": record, "history": history, "best_acc": best_acc,
        }

    # ---- the loop ------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    record: dict[str, Any] = history[-1] if history else {}
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        if stopped:
            break
        bundle.train.set_epoch(epoch)
        if not skip_batches:
            _seed_epoch(cfg.seed, epoch, dinfo.rank, device)
        step.set_epoch(epoch, cfg.epochs)
        forward.train()
        criterion.correct.zero_()
        sum_main = sum_sub = 0.0
        seen = batches_done = 0
        bar = tqdm(bundle.train, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if main and not os.environ.get("TQDM_DISABLE") else True,
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(bar):
            batches_done = i + 1
            if i < skip_batches:
                continue
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                losses = step(x, y)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(_stop_message(run_dir, epoch + 1, global_step + 1, str(err))) from None
            if cfg.optim.clip_grad > 0:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(raw)
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            n = y.shape[0]
            seen += n
            sum_main += losses["main"] * n
            sum_sub += losses["subnet"] * n
            if main and global_step % cfg.log_every == 0:
                rate = seen * dinfo.world_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{losses['loss']:.3f}", acc=f"{100 * int(criterion.correct) / seen:.1f}",
                                img_s=f"{rate:.0f}", refresh=False)
                if log is not None:
                    log.add_step_scalars(global_step, {"loss": losses["loss"], "main": losses["main"],
                                                       "lr": optimizer.param_groups[0]["lr"]})
            if main and step.last_stats is not None:
                log.add_step_stats(global_step, epoch + 1, losses["main"], step.last_stats)
            if cfg.max_steps and global_step >= cfg.max_steps:
                stopped = True
                break
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        totals = torch.tensor([sum_main, sum_sub, float(criterion.correct), float(seen)], dtype=torch.float64,
                              device=device)
        if dinfo.enabled:
            dist.all_reduce(totals)
        partial = stopped and batches_done < steps_per_epoch
        skip_batches = 0
        record = {
            "epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
            "kl_weight": step.active_kl_weight,
            "train_loss": float((totals[0] + totals[1]) / totals[3]),
            "train_loss_main": float(totals[0] / totals[3]), "train_loss_subnet": float(totals[1] / totals[3]),
            "train_acc": float(100 * totals[2] / totals[3]),
            "img_per_s": float(totals[3]) / max(train_time, 1e-9), "epoch_time_s": train_time,
        }
        if partial:
            record["partial"] = True
        if not _all_finite(raw):
            raise NonFiniteLossError(_stop_message(run_dir, epoch + 1, global_step, "the weights or BatchNorm "
                                                   "statistics contain NaN/inf; lower the learning rate"))
        last_epoch = epoch + 1 == cfg.epochs or stopped
        if (epoch + 1) % cfg.eval_every == 0 or last_epoch:
            t1 = time.perf_counter()
            record.update(_evaluate(cfg, ed, ema_ed if ema is not None else None, eval_depths, bundle, device,
                                    autocast_dtype))
            record["eval_time_s"] = time.perf_counter() - t1
        if not partial:
            history.append(record)
        is_best = record.get("test_acc") is not None and record["test_acc"] > best_acc
        if is_best:
            best_acc = record["test_acc"]
        if main:
            ckpt = checkpoint_dict(epoch + (0 if partial else 1), record)
            save_checkpoint(ckpt, run_dir / "last.pt")
            if is_best:
                save_checkpoint(ckpt, run_dir / "best.pt")
            del ckpt
            log.write(history + ([record] if partial else []))
            _log(_format_record(record, cfg.epochs))

    if main:
        plot_training(log.records, run_dir / "training.png", title=f"{cfg.name}: {cfg.model.name} on "
                      f"{cfg.data.name}, {cfg.st.num_subnets} sub-networks/step")
        log.close()
        _log(f"done: best test acc {best_acc:.2f}% -> {run_dir}")
    return {"run_dir": str(run_dir), "epochs": int(record.get("epoch", start_epoch)), "step": global_step,
            "best_acc": best_acc, "final": record, "checkpoint": str(run_dir / "last.pt")}


def _stop_message(run_dir: Path, epoch: int, step: int, reason: str) -> str:
    last = run_dir / "last.pt"
    kept = f"{last} keeps the last good epoch" if last.exists() else "no checkpoint was written"
    return f"training stopped at epoch {epoch}, step {step}: {reason}; {kept}"


def _resume_path(cfg: Config) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = cfg.run_dir / "last.pt"
        return path if path.exists() else None
    path = Path(cfg.resume).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {str(path)!r} does not exist")
    return path


def _evaluate(cfg: Config, ed: ElasticDepth, ema_ed: ElasticDepth | None, eval_depths: list, bundle,
              device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
    """Full network, eval sub-networks and EMA on the test set; BN re-estimation on a copy of the buffers.

    The global RNG state is restored afterwards so that evaluating never changes the training trajectory.
    """
    out: dict[str, float] = {}
    bn = cfg.bn_recal_images
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        r = evaluate_depth(ed, None, bundle.test, bundle.train, bn, device=device, amp_dtype=dtype)
        out["test_acc"], out["test_loss"] = r["acc"], r["loss"]
        for d in eval_depths:
            r = evaluate_depth(ed, d, bundle.test, bundle.train, bn, device=device, amp_dtype=dtype)
            out[f"test_acc_d{depth_key(d)}"] = r["acc"]
        if ema_ed is not None:
            r = evaluate_depth(ema_ed, None, bundle.test, bundle.train, bn, device=device, amp_dtype=dtype)
            out["ema_test_acc"] = r["acc"]
    return out


def _format_record(r: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}{' (partial)' if r.get('partial') else ''}", f"step {r['step']}",
             f"lr {r['lr']:.4g}", f"loss {r['train_loss']:.4f} (main {r['train_loss_main']:.4f} "
             f"sub {r['train_loss_subnet']:.4f})", f"train {r['train_acc']:.2f}%"]
    if r.get("test_acc") is not None:
        parts.append(f"test {r['test_acc']:.2f}%")
    parts += [f"[{k[len('test_acc_d'):]}] {v:.2f}%" for k, v in r.items() if k.startswith("test_acc_d")]
    if r.get("ema_test_acc") is not None:
        parts.append(f"ema {r['ema_test_acc']:.2f}%")
    parts.append(f"{r['img_per_s']:.0f} img/s, {r['epoch_time_s']:.1f}s")
    return " | ".join(parts)

