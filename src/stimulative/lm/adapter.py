"""An exit adapter on a frozen pretrained LM (Kangaroo's idea, Liu et al. 2024, https://arxiv.org/abs/2404.18911).

The intermediate states of a pretrained model do not suit its final norm and LM head (a few outlier channels
dominate them): reading layer ``k`` through the model's own tail gives drafts worse than uniform. ST retrains the
model so that its prefixes suit the shared tail; an adapter instead leaves every weight of the model as it is and
learns a small map on layer ``k``'s hidden state::

    exit_k(h) = lm_head(final_norm(h + up(silu(down(rms_norm(h) * g)))))

``up`` starts at zero, so an untrained adapter is the plain shared-head exit. Only the adapter trains (with ST's
loss: the token-level KL to the full model's next-token distribution), so the full model stays bit-identical:
self-speculative decoding that drafts with the first ``k`` layers + the adapter and verifies with the rest is
exact by construction, and the full model's quality cannot move.

    adapter = ExitAdapter(model.config.hidden_size, layer=8)
    history = train_exit_adapter(model, adapter, batches, steps=200, lr=1e-3)
    logits = exit_logits(model, adapter, ids)       # the draft's logits at every position
    save_adapter(adapter, "smollm2_exit8.pt"); adapter = load_adapter("smollm2_exit8.pt")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.losses import kl_loss
from ..core.tokens import model_inputs, valid_next_token_mask
from ..io import atomic_torch_save

__all__ = ["ExitAdapter", "exit_logits", "adapter_loss", "adapter_optimizer", "train_exit_adapter",
           "evaluate_adapter", "save_adapter", "load_adapter", "adapter_spec", "adapter_from_spec", "ADAPTER_FILE"]

FORMAT = "stimulative-exit-adapter-1"
ADAPTER_FILE = "exit_adapter.pt"  # what an adapter run (``stimulative train ... adapter.layer=K``) writes beside last.pt


class ExitAdapter(nn.Module):
    """A residual bottleneck MLP on layer ``layer``'s hidden state, read through the model's own final norm and head.

    Args:
        hidden_size: the model's width.
        layer: the exit: the adapter reads the output of the first ``layer`` layers (1 <= layer < L).
        rank: the bottleneck width (parameters: ``2 * hidden_size * rank + hidden_size``).
        eps: the input RMS norm's epsilon.
    """

    def __init__(self, hidden_size: int, layer: int, rank: int = 1024, eps: float = 1e-6):
        super().__init__()
        if int(layer) < 1 or int(rank) < 1 or int(hidden_size) < 1:
            raise ValueError(f"hidden_size, layer and rank must be >= 1, got {hidden_size}, {layer}, {rank}")
        self.hidden_size, self.layer, self.rank, self.eps = int(hidden_size), int(layer), int(rank), float(eps)
        self.gain = nn.Parameter(torch.ones(self.hidden_size))
        self.down = nn.Linear(self.hidden_size, self.rank, bias=False)
        self.up = nn.Linear(self.rank, self.hidden_size, bias=False)
        nn.init.zeros_(self.up.weight)  # the untrained adapter is the identity: the plain shared-head exit

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return h + self.up(F.silu(self.down(x.to(h.dtype) * self.gain)))

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, layer={self.layer}, rank={self.rank}"


def _tail(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    from ..hf import output_tail

    tail = output_tail(model)
    if tail is None:
        raise ValueError(f"{type(model).__name__} has no final norm + LM head that an exit adapter can read through")
    return tail


def _check(model: nn.Module, adapter: ExitAdapter) -> int:
    layers = int(model.config.num_hidden_layers)
    if not 1 <= adapter.layer < layers:
        raise ValueError(f"adapter layer {adapter.layer} must be in 1..{layers - 1} (the model has {layers} layers)")
    if adapter.hidden_size != int(model.config.hidden_size):
        raise ValueError(f"adapter hidden_size {adapter.hidden_size} != the model's {model.config.hidden_size}")
    return layers


def _hidden_and_full(model: nn.Module, adapter: ExitAdapter, ids: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``adapter.layer``'s hidden states and the full model's logits, off one forward of the model."""
    tokens, kwargs = model_inputs(ids)
    out = model(tokens, output_hidden_states=True, use_cache=False, **kwargs)
    return out.hidden_states[adapter.layer], out.logits


def exit_logits(model: nn.Module, adapter: ExitAdapter, ids: torch.Tensor) -> torch.Tensor:
    """The adapter exit's next-token logits at every position of ``ids`` ``(batch, time)``: ``(batch, time, V)``.
    Runs the first ``adapter.layer`` layers only (the model is made depth-elastic in place, ``elastic_depth``)."""
    from ..hf import elastic_depth

    _check(model, adapter)
    ed = elastic_depth(model)
    tokens, kwargs = model_inputs(ids)
    with ed.depth([adapter.layer]):
        h = model(tokens, output_hidden_states=True, use_cache=False, **kwargs).hidden_states[adapter.layer]
    return _tail(model)(adapter(h))


def adapter_loss(model: nn.Module, adapter: ExitAdapter, ids: torch.Tensor, temperature: float = 1.0
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """ST's token-level KL from the full model's next-token distribution to the adapter exit's, over the
    positions of ``ids`` that predict a real token (``IGNORE_INDEX`` padding excluded). The model runs without
    gradients; only the adapter gets them. Returns the loss and ``{"kl", "agree"}`` (top-1 agreement)."""
    _check(model, adapter)
    with torch.no_grad():
        h, full = _hidden_and_full(model, adapter, ids)
    keep = valid_next_token_mask(ids)
    with _frozen(model):  # the gradient flows through the final norm and head into the adapter only
        student = _tail(model)(adapter(h))[:, :-1][keep]
    teacher = full[:, :-1][keep]
    loss = kl_loss(student, teacher, temperature)
    agree = float((student.argmax(-1) == teacher.argmax(-1)).float().mean())
    return loss, {"kl": float(loss.detach()), "agree": agree}


def adapter_optimizer(adapter: ExitAdapter, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """The adapter's AdamW (``train_exit_adapter`` builds it; pass one, with its state loaded, to continue)."""
    return torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=weight_decay)


def train_exit_adapter(model: nn.Module, adapter: ExitAdapter, batches: Iterable[torch.Tensor], steps: int,
                       lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 20, clip_grad: float = 1.0,
                       log: Callable[[dict[str, Any]], None] | None = None, log_every: int = 10,
                       optimizer: torch.optim.Optimizer | None = None, first_step: int = 0
                       ) -> list[dict[str, Any]]:
    """Train ``adapter`` for ``steps`` AdamW steps on ``batches`` (cycled) with the model frozen (eval mode, no
    gradients; its parameters are left exactly as they were). Linear warmup over ``warmup_steps``, then ``lr``.

    To continue a run in chunks, pass the ``optimizer`` of the earlier chunk (``adapter_optimizer`` with its
    ``state_dict`` loaded) and ``first_step``, the steps already made (the warmup continues where it was).

    Returns one row per ``log_every`` steps: ``step`` (counting from ``first_step``), ``kl``, ``agree``
    (training-batch means), ``time_s``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _check(model, adapter)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    adapter.train()
    optimizer = optimizer if optimizer is not None else adapter_optimizer(adapter, lr, weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (first_step + s + 1) / max(1, warmup_steps)))
    history: list[dict[str, Any]] = []
    sums = {"kl": 0.0, "agree": 0.0}
    count, t0 = 0, time.perf_counter()
    try:
        for step, ids in zip(range(1, steps + 1), _cycle(batches)):
            loss, stats = adapter_loss(model, adapter, ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(adapter.parameters(), clip_grad)
            optimizer.step()
            schedule.step()
            for k in sums:
                sums[k] += stats[k]
            count += 1
            if step % log_every == 0 or step == steps:
                row = {"step": first_step + step, **{k: v / count for k, v in sums.items()},
                       "time_s": time.perf_counter() - t0}
                history.append(row)
                if log is not None:
                    log(row)
                sums, count = {k: 0.0 for k in sums}, 0
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
        adapter.eval()
    return history


@torch.no_grad()
def evaluate_adapter(model: nn.Module, adapter: ExitAdapter, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """The adapter exit on held-out batches: ``loss`` (next-token CE, nats), ``agree`` (top-1 agreement with the
    full model), ``full_loss`` (the full model's CE, off the same forward) and ``tokens``, over the positions that
    predict a real token."""
    _check(model, adapter)
    was = (model.training, adapter.training)
    model.eval()
    adapter.eval()
    total, full_total, agree, count = 0.0, 0.0, 0, 0
    try:
        for ids in batches:
            h, full = _hidden_and_full(model, adapter, ids)
            keep = valid_next_token_mask(ids)
            logits = _tail(model)(adapter(h))[:, :-1][keep].float()
            teacher = full[:, :-1][keep].float()
            target = ids[:, 1:][keep]
            total += float(F.cross_entropy(logits, target, reduction="sum"))
            full_total += float(F.cross_entropy(teacher, target, reduction="sum"))
            agree += int((logits.argmax(-1) == teacher.argmax(-1)).sum())
            count += int(keep.sum())
    finally:
        model.train(was[0])
        adapter.train(was[1])
    if count == 0:
        raise ValueError("no held-out tokens")
    return {"loss": total / count, "agree": agree / count, "full_loss": full_total / count, "tokens": count}


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _cycle(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("no training batches")


def model_fingerprint(model: nn.Module) -> dict[str, float]:
    """A cheap identity of a model's weights (parameter count, sum and sum of squares in float64): an exit adapter
    is trained for one frozen model, and ``check_teacher`` refuses it on another."""
    with torch.no_grad():
        params = list(model.parameters())
        return {"parameters": float(sum(p.numel() for p in params)),
                "sum": float(sum(p.double().sum() for p in params)),
                "sum_sq": float(sum(p.double().pow(2).sum() for p in params))}


def check_teacher(spec: dict[str, Any], fingerprint: dict[str, float], where: Any, source: Any) -> None:
    """A ``ValueError`` naming ``model.pretrained`` when the model at ``where`` is not the one the adapter of
    ``spec`` (a checkpoint's ``exit_adapter``) was trained on (a spec without a fingerprint is not checked)."""
    saved = spec.get("model_fingerprint")
    if saved is None:
        return
    same = all(abs(saved[k] - fingerprint[k]) <= 1e-9 * max(1.0, abs(saved[k])) for k in ("parameters", "sum", "sum_sq"))
    if not same:
        raise ValueError(f"model.pretrained {where} is not the model the exit adapter of {source} was trained on "
                         "(its weights differ): an adapter drafts for one model; use that model")


def adapter_spec(adapter: ExitAdapter) -> dict[str, Any]:
    """The adapter's sizes (``adapter_from_spec`` rebuilds it from them and its ``state_dict``)."""
    return {"hidden_size": adapter.hidden_size, "layer": adapter.layer, "rank": adapter.rank, "eps": adapter.eps}


def adapter_from_spec(spec: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> ExitAdapter:
    """The adapter of ``adapter_spec``'s sizes with ``state_dict`` loaded, in eval mode."""
    adapter = ExitAdapter(spec["hidden_size"], spec["layer"], spec["rank"], spec["eps"])
    adapter.load_state_dict(state_dict)
    return adapter.eval()


def save_adapter(adapter: ExitAdapter, path: str | Path, **extra: Any) -> Path:
    """Write the adapter (its sizes and weights, plus ``extra`` metadata) atomically; ``load_adapter`` reads it."""
    path = Path(path)
    atomic_torch_save({"format": FORMAT, **adapter_spec(adapter), "state_dict": adapter.state_dict(),
                       "extra": extra}, path)
    return path


def load_adapter(path: str | Path, map_location: str | torch.device = "cpu") -> ExitAdapter:
    """The adapter ``save_adapter`` wrote (``weights_only`` load: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exit adapter {str(path)!r} does not exist")
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a file that is no torch checkpoint at all
        raise ValueError(f"{str(path)!r} is not an exit adapter written by stimulative (it does not load: "
                         f"{type(e).__name__})") from e
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an exit adapter written by stimulative (format {FORMAT})")
    return adapter_from_spec(saved, saved["state_dict"])
