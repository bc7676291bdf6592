"""Prefix sub-networks read off one forward of the full model ("exits").

A depth-``k`` sub-network of a single-stage model (a decoder-only LM, a ViT) at full input size is its first
``k`` blocks followed by the model's own tail (final norm + head): its forward is a prefix of the full
forward. ``PrefixExits`` runs the full model once, keeps the hidden state after block ``k`` for every requested
depth (forward hooks on the blocks) and passes each through the tail. The prefix activations are the very
tensors of the full forward, so one backward of ``main + sum(lambda * subnet)`` gives the same gradients as a
separate forward/backward per sub-network (autograd sums the paths), for the price of one tail per exit.

``StimulativeStep(..., exits=PrefixExits(ed, tail))`` uses it for every step whose sub-networks are prefixes at
full size (ordered or inter-stage sampling of one stage, ``min_input_scale=1``, ``subnet_fraction=1``); any
other step keeps the separate forwards. ``vision_prefix_exits(ed)`` builds the tail of torchvision's and timm's
ViTs; ``stimulative.hf.prefix_exits`` that of ``transformers`` models.

Example:
    >>> import torch, timm, stimulative as st
    >>> from stimulative.core.exits import vision_prefix_exits
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4, num_classes=10)
    >>> ed = st.ElasticDepth(model)
    >>> exits = vision_prefix_exits(ed)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> full, (two,) = exits(model.eval(), x, [2])
    >>> with ed.depth([2]):
    ...     torch.allclose(two, model(x), atol=1e-5)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .elastic import ElasticDepth

__all__ = ["PrefixExits", "vision_prefix_exits", "random_layers_active"]

Tail = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PrefixExits:
    """Run the full model once and return its output plus the output of each requested prefix depth.

    Args:
        ed: the model's ``ElasticDepth``; it must have exactly one stage (the prefix depths count its blocks).
        tail: ``tail(hidden, x)`` -> the logits of the prefix whose last block output is ``hidden`` (the model's
            own final norm and head; ``x`` is the model input, e.g. to select token rows).

    Calling ``exits(model, x, depths)`` returns ``(full_output, [output of depth d for d in depths])``; a depth
    equal to the full depth returns the full output itself. ``model`` is what computes the full output from
    ``x`` (``ed.model``, a DDP wrapper, ``TokenLogits``...).
    """

    def __init__(self, ed: ElasticDepth, tail: Tail):
        if ed.num_stages != 1:
            raise ValueError(f"prefix exits need a model with one stage of blocks, got {ed.num_stages} stages "
                             f"({ed.full_depths}); multi-stage models keep separate sub-network forwards")
        self.ed = ed
        self.tail = tail
        self.blocks: list[nn.Module] = list(ed.stages[0].blocks)
        self.verified: bool | None = None  # set by the first ``matches``

    def matches(self, model: nn.Module, x: torch.Tensor) -> bool:
        """Whether an exit equals the forward with the later blocks skipped, checked once on two samples of
        ``x`` in eval mode (a tail that is not the model's real one, e.g. logit soft-capping after the head or a
        pooler, fails it; the step then keeps separate passes and warns once)."""
        if self.verified is None:
            k = max(self.ed.min_depths[0], self.depth // 2)
            if k >= self.depth:
                self.verified = True
                return True
            # every module's own mode, restored one by one (a user may keep some submodules in eval)
            was = {id(m): (m, m.training) for root in (model, self.ed.model) for m in root.modules()}
            xs = x[:2]
            try:
                model.eval()
                self.ed.model.eval()
                with torch.no_grad(), self.ed.depth(None):
                    _, (out,) = self(model, xs, [k])
                    with self.ed.depth([k]):
                        ref = model(xs)
            finally:
                for m, t in was.values():
                    m.training = t
            if out.numel() == 0:  # e.g. two padding-only token rows: nothing to compare, check the next batch
                return False
            ok = out.shape == ref.shape and bool(torch.allclose(out.float(), ref.float(), rtol=1e-3, atol=1e-4))
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # every rank must take the same path (the one-forward step has one backward, the other 1 + n)
                flag = torch.tensor([int(ok)], device=out.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
                ok = bool(flag.item())
            self.verified = ok
            if not self.verified:
                warnings.warn(f"prefix exits: the depth-{k} exit differs from the forward with the later blocks "
                              "skipped (the model's output is more than its final norm + head); using separate "
                              "sub-network passes", stacklevel=3)
        return self.verified

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def __call__(self, model: nn.Module, x: torch.Tensor,
                 depths: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        depths = [int(d) for d in depths]
        full, hidden, tail = self.hidden_states(model, x, depths)
        return full, [full if d == self.depth else tail(hidden[d]) for d in depths]

    def hidden_states(self, model: nn.Module, x: torch.Tensor, depths: Sequence[int]
                      ) -> tuple[torch.Tensor, dict[int, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """One forward: ``(full output, {d: output of block d} for the depths below the full one, tail)``, where
        ``tail(hidden)`` turns a block output into that prefix's output (under the autocast state the blocks ran
        in). For exits one at a time, e.g. to hold one prefix's logits in memory at once."""
        low = self.ed.min_depths[0]
        for d in depths:
            if not low <= int(d) <= self.depth:
                raise ValueError(f"exit depth {d} is outside [{low}, {self.depth}]")
        hidden: dict[int, torch.Tensor] = {}
        amp: dict[str, tuple] = {}
        handles = []
        for d in sorted({int(d) for d in depths}):
            if d < self.depth:
                def keep(module, inputs, out, d=d):
                    h = out[0] if isinstance(out, tuple) else out
                    hidden[d] = h
                    amp["state"] = _autocast_state(h.device.type)
                handles.append(self.blocks[d - 1].register_forward_hook(keep))
        try:
            full = model(x)
        finally:
            for h in handles:
                h.remove()

        def tail(h: torch.Tensor) -> torch.Tensor:
            # the tails run under the autocast state the blocks ran in (an engine may autocast inside the model)
            kind, enabled, dtype = amp["state"]
            with torch.autocast(kind, dtype=dtype, enabled=enabled):
                return self.tail(h, x)

        return full, hidden, tail


def vision_prefix_exits(ed: ElasticDepth) -> PrefixExits | None:
    """``PrefixExits`` of a torchvision or timm ViT (their final norm and classification head); None for
    other models."""
    model = ed.model
    if ed.num_stages != 1:
        return None
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "ln") and hasattr(model, "heads"):  # torchvision ViT
        return PrefixExits(ed, lambda h, x: model.heads(encoder.ln(h)[:, 0]))
    if hasattr(model, "forward_head") and hasattr(model, "norm") and hasattr(model, "blocks"):  # timm ViT
        return PrefixExits(ed, lambda h, x: model.forward_head(model.norm(h)))
    return None


def _autocast_state(kind: str) -> tuple[str, bool, torch.dtype]:
    try:
        return kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch < 2.4: per-device functions
        if kind == "cpu":
            return kind, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return kind, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


_RANDOM_LAYERS = {"DropPath", "StochasticDepth", "PatchDropout", "DropBlock2d"}


def random_layers_active(model: nn.Module) -> bool:
    """True when a forward of ``model`` is random: an active dropout (modules, or the attention-dropout rates
    ``transformers`` layers keep as floats) or a stochastic-depth rate. Exits read off one forward share its random
    draws, which separate sub-network passes would draw anew, so the step then keeps separate passes."""
    for m in model.modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if m.__dict__.get("_st_drop", 0.0) > 0:
            return True
        for attr in ("drop_prob", "p", "prob"):  # timm DropPath / torchvision StochasticDepth / timm PatchDropout
            rate = getattr(m, attr, None) if type(m).__name__ in _RANDOM_LAYERS else None
            if isinstance(rate, (int, float)) and rate > 0:
                return True
        rate = m.__dict__.get("attention_dropout")
        if isinstance(rate, float) and rate > 0:
            return True
    return False
