"""Where and how a run executes: the device, the distributed process group, mixed precision, backend flags.

``resolve_device`` is the package's only device resolver (training, evaluation and every command use it).
``Runtime.start(cfg)`` joins torchrun's process group when there is one and applies ``threads``,
``deterministic`` and ``amp``; ``runtime.wrap(model)`` adds autocast, ``torch.compile`` and DDP around the model;
``runtime.main_first(fn)`` runs a check on rank 0 alone and makes every rank fail with it.
``distributed_error_line(err, message)`` is how the CLI reports an error under torchrun: once per job, from the
rank that raised it (``[rank N] ...``), so an error of rank 1 alone is not lost when all ranks exit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .config import Config

__all__ = ["DistInfo", "Runtime", "RankZeroError", "resolve_device", "setup_distributed", "amp_dtype",
           "AutocastForward", "distributed_error_line"]

T = TypeVar("T")


class RankZeroError(ValueError):
    """Rank 0's error, raised on the other ranks too, so that all processes stop together (rank 0 prints it)."""


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


class AutocastForward(nn.Module):
    """Runs the wrapped model's forward under ``torch.autocast`` (so backward runs outside autocast)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.device_type, self.dtype = device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(x)


@dataclass
class Runtime:
    """The device, the process group and the precision of one training run."""

    device: torch.device
    dist: DistInfo
    autocast: torch.dtype | None = None

    @classmethod
    def start(cls, cfg: Config) -> Runtime:
        """Resolve the device, join torchrun's process group, apply threads / determinism / amp; check the batch.

        ``cfg`` is a ``Config`` or a language-model run's ``LMConfig`` (no ``deterministic``/``amp`` keys: off)."""
        device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        runtime = cls(device, setup_distributed(device))
        try:
            if cfg.threads > 0:
                torch.set_num_threads(cfg.threads)
            if getattr(cfg, "deterministic", False):
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
            elif device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            runtime.autocast = amp_dtype(getattr(cfg, "amp", "none"), device)
            if cfg.batch_size % runtime.dist.world_size:
                raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {runtime.dist.world_size} "
                                 "processes")
        except BaseException:
            runtime.close()
            raise
        return runtime

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def wrap(self, model: nn.Module, compile: bool = False, find_unused_parameters: bool = False) -> nn.Module:
        """What the training step calls: ``model`` under autocast, compiled, in DDP (each only when enabled)."""
        forward = model
        if self.autocast is not None:
            forward = AutocastForward(forward, self.device.type, self.autocast)
        if compile:
            forward = torch.compile(forward)
        if self.dist.enabled:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters)
        return forward

    def main_first(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` on rank 0 only (its result; None on the other ranks). When it raises, every rank raises: rank 0
        its error, the others ``RankZeroError`` with the same message, so no process waits for a dead one."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = err
        if self.dist.enabled:
            box = [None if error is None else str(error)]
            dist.broadcast_object_list(box, src=0)
            if error is None and box[0] is not None:
                raise RankZeroError(box[0])
        if error is not None:
            raise error
        return result

    def all_reduce(self, values: list[float]) -> list[float]:
        """Sum ``values`` over the processes (float64; unchanged in a single process)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Leave the process group if this run joined it."""
        if self.dist.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _first_report(message: str, timeout_s: float = 3.0) -> bool:
    """Whether this process is the first of its torchrun job to report ``message``: the job's store (torchrun's
    agent store at ``MASTER_ADDR:MASTER_PORT``) counts the reports. True without a store or when it cannot be
    reached within ``timeout_s`` (then every rank that raised prints its line)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true" or "MASTER_PORT" not in os.environ:
        return True
    try:
        store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=timedelta(seconds=timeout_s))
        key = "stimulative/reported/" + hashlib.sha1(message.encode()).hexdigest()
        return int(store.add(key, 1)) == 1
    except Exception:  # noqa: BLE001 - no store: report rather than lose the error
        return True


def distributed_error_line(err: BaseException, message: str) -> str | None:
    """The error line this process of a distributed run prints for ``err`` (``message``: its one-line text), or
    None when another process reports it.

    Every rank that raised an error prints it, prefixed with its rank (``[rank 1] ...``), so an error raised on a
    non-zero rank alone is not lost when torchrun stops all ranks; an error several ranks raise alike (a missing
    dataset) is printed once, by the first to report it; ``RankZeroError`` (rank 0's error, re-raised on the
    other ranks by ``Runtime.main_first``) is left to rank 0.
    """
    if isinstance(err, RankZeroError):
        return None
    if not _first_report(message):
        return None
    return f"[rank {os.environ.get('RANK', '0')}] {message}"
