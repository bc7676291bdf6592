"""LayerSkip (Elhoushi et al. 2024, https://arxiv.org/abs/2404.16710): the method people pick instead of ST to make
the early layers of an LM good exits. Two parts, both per training step:

* **layer dropout**: layer ``l`` of ``L`` (0-based) is skipped per sample with rate
  ``p_max * D(l) * S(t)``, ``D(l) = exp(l ln2 / (L-1)) - 1`` (0 at the first layer, 1 at the last) and
  ``S(t) = exp(t ln2 / (T-1)) - 1`` when training from scratch (``time_schedule="exp"``) or 1 for continued
  pre-training (``"constant"``); a skipped sample keeps its input (no rescaling, as torchtune's
  ``LayerDropout``);
* **early-exit loss**: the cross-entropy of every enabled layer's output through the model's one final norm
  and LM head, weighted as torchtune's ``sum_l`` scale: over the enabled layers in order,
  ``w_j = e_scale * sum_{i<=j} (l_i + 1)`` for early layers and ``sum_{i<=j} (l_i + 1)`` for the last layer,
  normalised to sum to 1 (quadratic in depth, the last layer weighs most). The curriculum is rotational: the
  early-exit loss is on for every ``R``-th layer, the pattern moving one layer per step (``R = 0`` or 1: every
  layer); the last layer is always on.

All exits are read off one forward (``PrefixExits``), so a step costs one forward and one backward. The rates
stay set on the layers after a step (they act in train mode only); ``set_drop_path(ed, 0.0)`` clears them. Under
``torch.compile`` every new rate recompiles the layers (the rate is a Python float). Settings in
the paper: ``p_max`` 0.1-0.2, ``e_scale`` 0.1-0.2, ``R`` about ``L/4``. The formulas follow the issue text and
torchtune's ``early_exit_loss``/``layer_dropout`` modules (torchtune itself targets its own model classes, not
``transformers`` layers, so they are implemented here and checked against the formulas in tests/test_layerskip.py).

Example:
    >>> import torch, transformers
    >>> from stimulative import hf
    >>> from stimulative.lm.layerskip import LayerSkipStep
    >>> from stimulative.core.tokens import TokenLogits, next_token_targets
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
    ...                                num_attention_heads=2, max_position_embeddings=32)
    >>> model = transformers.LlamaForCausalLM(cfg)
    >>> ed = hf.elastic_depth(model)
    >>> tok = TokenLogits(model)
    >>> step = LayerSkipStep(ed, hf.prefix_exits(ed, rows=tok.select_rows), model=tok, total_steps=100,
    ...                      p_max=0.1, e_scale=0.1, rotation=2)
    >>> ids = torch.randint(0, 64, (2, 16))
    >>> sorted(step(ids, next_token_targets(ids)))
    ['loss', 'main', 'subnet']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.droppath import drop_path_rates, set_drop_path
from ..core.elastic import ElasticDepth
from ..core.exits import PrefixExits
from ..core.losses import at_least_fp32

__all__ = ["LAYERSKIP_TIME_SCHEDULES", "layer_dropout_rates", "time_scale", "exit_layers", "exit_loss_weights",
           "layerskip_step", "LayerSkipStep"]

LAYERSKIP_TIME_SCHEDULES = ("exp", "constant")


def time_scale(step: int, total_steps: int, schedule: str = "exp") -> float:
    """``S(t)``: ``exp(t ln2 / (T-1)) - 1`` (0 at the first step, 1 at the last) or 1 (``constant``)."""
    if schedule not in LAYERSKIP_TIME_SCHEDULES:
        raise ValueError(f"time schedule {schedule!r} is not one of {', '.join(LAYERSKIP_TIME_SCHEDULES)}")
    if schedule == "constant" or total_steps <= 1:
        return 1.0
    t = min(max(step, 0), total_steps - 1)
    return math.exp(t * math.log(2) / (total_steps - 1)) - 1.0


def layer_dropout_rates(num_layers: int, p_max: float, step: int, total_steps: int,
                        schedule: str = "exp") -> list[float]:
    """The drop rate of every layer at optimizer step ``step`` of ``total_steps``: ``p_max * D(l) * S(t)``."""
    return drop_path_rates(num_layers, p_max * time_scale(step, total_steps, schedule), "exponential")


def exit_layers(num_layers: int, rotation: int, step: int) -> list[int]:
    """The 0-based layers whose output gets the early-exit loss at ``step``: every ``rotation``-th layer, the
    pattern shifted by one layer per step, plus the last layer (``rotation`` 0 or 1: every layer)."""
    if rotation <= 1:
        return list(range(num_layers))
    on = [layer for layer in range(num_layers) if (layer - step) % rotation == 0]
    return sorted(set(on) | {num_layers - 1})


def exit_loss_weights(layers: Sequence[int], num_layers: int, e_scale: float) -> list[float]:
    """torchtune's ``sum_l`` scale over the enabled ``layers`` (0-based, increasing), normalised to sum to 1."""
    raw, total = [], 0.0
    for layer in layers:
        total += layer + 1
        raw.append(total * (e_scale if layer < num_layers - 1 else 1.0))
    norm = sum(raw)
    return [w / norm for w in raw]


def layerskip_step(ed: ElasticDepth, exits: PrefixExits, x: torch.Tensor, y: torch.Tensor, *, step: int,
                   total_steps: int, p_max: float = 0.1, e_scale: float = 0.1, rotation: int = 0,
                   time_schedule: str = "exp", model: nn.Module | None = None,
                   backward: Callable[[torch.Tensor], None] | None = None) -> dict[str, float]:
    """One LayerSkip training step (layer dropout + early-exit loss; backward inside, the caller steps the
    optimizer). ``model(x)`` must return the logits rows that ``y`` indexes (``TokenLogits`` for tokens).

    Returns:
        ``{"loss", "main", "subnet"}``: the weighted total, the last layer's cross-entropy, and the weighted
        early-exit part of the total (the layers before the last).
    """
    layers = ed.full_depths[0]
    set_drop_path(ed, 0.0, rates=layer_dropout_rates(layers, p_max, step, total_steps, time_schedule),
                  scale_by_keep=False)
    on = exit_layers(layers, rotation, step)
    weights = exit_loss_weights(on, layers, e_scale)
    _, logits = exits(ed.model if model is None else model, x, [layer + 1 for layer in on])
    losses = [F.cross_entropy(at_least_fp32(z), y) for z in logits]
    total = sum(w * loss for w, loss in zip(weights, losses))
    total.backward() if backward is None else backward(total)
    value, last = float(total.detach()), float(losses[-1].detach())
    return {"loss": value, "main": last, "subnet": value - weights[-1] * last}


@dataclass
class LayerSkipStep:
    """LayerSkip's training step for a training loop: ``step(x, y)`` runs ``layerskip_step`` at its own step
    counter (``calls``; set it when resuming).

    Args:
        ed: the LM's ``ElasticDepth`` (one stage of decoder layers: ``hf.elastic_depth(model)``).
        exits: its ``PrefixExits`` (``hf.prefix_exits(ed, rows=TokenLogits(model).select_rows)``).
        total_steps: ``T`` of the dropout time schedule.
        p_max: the largest layer-dropout rate (last layer, last step).
        e_scale: the early layers' loss scale.
        rotation: ``R`` of the rotational curriculum (0 or 1: every layer every step).
        time_schedule: ``exp`` (training from scratch) or ``constant`` (continued pre-training).
        model: what maps ``x`` to the logits rows (``TokenLogits``); default ``ed.model``.
        backward: replaces ``loss.backward()`` (Lightning, Accelerate).
    """

    ed: ElasticDepth
    exits: PrefixExits
    total_steps: int
    p_max: float = 0.1
    e_scale: float = 0.1
    rotation: int = 0
    time_schedule: str = "exp"
    model: nn.Module | None = None
    backward: Callable[[torch.Tensor], None] | None = None
    calls: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.ed.num_stages != 1:
            raise ValueError("LayerSkip needs a model with one stage of layers (a decoder-only LM)")
        if not isinstance(self.exits, PrefixExits) or self.exits.ed is not self.ed:
            raise ValueError("exits must be the PrefixExits of the same ElasticDepth (hf.prefix_exits(ed, ...)); "
                             "None means the model's final norm and head were not recognised")
        if not 0 <= self.p_max < 1:
            raise ValueError(f"p_max must be in [0, 1), got {self.p_max}")
        if self.e_scale < 0:
            raise ValueError(f"e_scale must be >= 0, got {self.e_scale}")
        time_scale(0, self.total_steps, self.time_schedule)  # validates the schedule name

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        losses = layerskip_step(self.ed, self.exits, x, y, step=self.calls, total_steps=self.total_steps,
                                p_max=self.p_max, e_scale=self.e_scale, rotation=self.rotation,
                                time_schedule=self.time_schedule, model=self.model, backward=self.backward)
        self.calls += 1
        return losses
