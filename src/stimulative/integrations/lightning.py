"""ST/ST++ as a LightningModule: ``StimulativeModule(model, st=...)`` and an ordinary ``Trainer``.

Install with ``pip install "stimulative[lightning]"``. The module runs ``StimulativeStep`` under Lightning's
manual optimisation (``automatic_optimization = False``)::

    import lightning as L
    import stimulative as st
    from stimulative.integrations.lightning import StimulativeModule

    module = StimulativeModule(st.create_model("cifar_resnet20", num_classes=10),
                               st=dict(num_subnets=6, kl_norm="layer", amplitude="adaptive", min_input_scale=0.43))
    L.Trainer(max_epochs=200).fit(module, train_loader, val_loader)

What it does per batch: the main network and every sub-network forward/backward through
``self.manual_backward`` (so Lightning's precision plugin scales fp16 losses); under DDP the main pass and all
sub-network passes but the last run in ``strategy.block_backward_sync()`` (gradients all-reduced once per
step); then ``optimizer.step()``, ``zero_grad()`` and ``scheduler.step()`` (per iteration). At the start of
every epoch ``step.set_epoch(current_epoch, max_epochs)`` applies the recipe's ``start_epoch`` and
``kl_schedule``. Logged with ``self.log``: ``train/loss``, ``train/main``, ``train/subnet``,
``train/kl_weight``, ``train/lr``; on validation ``val/loss``, ``val/acc`` and ``val/acc@<depth>`` for
every ``eval_depths`` entry.

``ElasticDepth`` patches the model in place; the module builds it (and the step, whose hooks call
``manual_backward`` and the strategy's sync context) in ``setup()``, on every process. A built module still
pickles (gated blocks pickle as their original class and are gated again on load). Call ``module.build()`` to
get ``module.ed`` / ``module.step`` before ``fit`` in a single process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import stimulative as st
from stimulative._extras import require

pl = require("lightning.pytorch", "lightning", "stimulative.integrations.lightning")
ParallelStrategy = require("lightning.pytorch.strategies", "lightning", "stimulative.integrations.lightning"
                           ).ParallelStrategy

__all__ = ["StimulativeModule", "cosine_schedule"]

# Step options the module owns: it passes them itself.
_OWNED = ("ed", "space", "model", "backward", "no_sync", "scaler", "seed")
# Keys of an options mapping that build the sample space rather than the step.
_SPACE_KEYS = ("sampling", "ranges", "depths")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: linear warmup over ``warmup_steps``, then cosine from the base LR to 0."""
    total = max(int(total_steps), 1)

    def factor(i: int) -> float:
        if i < warmup_steps:
            return (i + 1) / warmup_steps
        progress = min((i - warmup_steps) / max(total - warmup_steps, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _depth_key(config: Sequence) -> str:
    return "-".join(str(v) for v in config)


class StimulativeModule(pl.LightningModule):
    """A LightningModule that trains ``model`` with Stimulative Training (ST / ST++).

    Args:
        model: a residual classifier (``st.create_model(...)``, torchvision, timm); pass it unpatched (the
            module applies ``ElasticDepth`` in ``setup()``).
        st: the ST options: a recipe's ``st`` section (``STConfig``, read by ``StimulativeStep.from_config``),
            or a mapping of ``StimulativeStep`` options plus ``sampling``/``ranges`` for the sample space
            (e.g. ``dict(num_subnets=6, kl_norm="layer", amplitude="adaptive", min_input_scale=0.43)``). None: ST
            with one sub-network.
        optimizer: ``optimizer(parameters) -> Optimizer``; default SGD(lr 0.1, momentum 0.9, Nesterov,
            weight decay 5e-4). Or override ``configure_optimizers`` as usual.
        scheduler: "cosine" (per-iteration cosine to 0 over ``trainer.estimated_stepping_batches``), None
            (constant LR) or ``scheduler(optimizer, total_steps) -> LRScheduler``. Stepped every iteration.
        seed: seeds the sub-network sampler (``seed``) and the input-size generator (``seed + 1``). The same
            on every process, so all ranks draw the same sub-networks and sizes (as ``stimulative train``
            does).
        stages: optional ``ElasticDepth`` stage spec for models it does not discover by itself.
        epochs: length of the ``kl_schedule`` in epochs; default ``trainer.max_epochs``.
        clip_grad: max gradient norm (``self.clip_gradients``); 0 = off (``Trainer(gradient_clip_val=...)``
            does not apply to manual optimisation).
        eval_depths: sub-networks evaluated in ``validation_step`` besides the full network, e.g.
            ``[[1, 1, 1]]``; "min" stands for the smallest one (``ed.min_depths``).

    Attributes:
        ed, step: the ``ElasticDepth`` and ``StimulativeStep`` (after ``setup()`` / ``build()``).
        last_losses: the ``{"loss", "main", "subnet"}`` of the latest training step.
    """

    def __init__(self, model: nn.Module, st: Any = None, *,
                 optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
                 scheduler: str | Callable[[torch.optim.Optimizer, int], Any] | None = "cosine",
                 seed: int = 0, stages: Any = None, epochs: int | None = None, clip_grad: float = 0.0,
                 eval_depths: Sequence[Sequence[int] | str] = ()):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.st_options = {} if st is None else st
        if isinstance(self.st_options, Mapping):
            owned = sorted(set(self.st_options) & set(_OWNED))
            if owned:
                raise ValueError(f"st options {owned} are set by StimulativeModule "
                                 "(seed: its seed= argument)")
        if not (scheduler is None or scheduler == "cosine" or callable(scheduler)):
            raise ValueError(f"scheduler must be 'cosine', None or a callable, got {scheduler!r}")
        self.optimizer_factory = optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self.seed, self.stages, self.epochs, self.clip_grad = seed, stages, epochs, clip_grad
        self.eval_depths = [d if isinstance(d, str) else list(d) for d in eval_depths]
        self.ed: st.ElasticDepth | None = None
        self.step: st.StimulativeStep | None = None
        self.last_losses: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------------
    # building
    # ------------------------------------------------------------------------------------------------------
    def build(self) -> st.StimulativeStep:
        """Apply ``ElasticDepth`` and build the step (idempotent; ``setup()`` calls it)."""
        if self.step is not None:
            return self.step
        self.ed = st.ElasticDepth(self.model, stages=self.stages)
        hooks = dict(backward=self.manual_backward, no_sync=self._no_sync, seed=self.seed + 1)
        if isinstance(self.st_options, Mapping):
            options = dict(self.st_options)
            space_args = {k: options.pop(k) for k in _SPACE_KEYS if k in options}
            space = st.SampleSpace.for_model(self.ed, space_args.get("sampling", "ordered"),
                                             ranges=space_args.get("ranges"), seed=self.seed,
                                             depths=space_args.get("depths"))
            self.step = st.StimulativeStep(self.ed, space, **options, **hooks)
        else:
            self.step = st.StimulativeStep.from_config(self.st_options, self.ed, space_seed=self.seed,
                                                       **hooks)
        return self.step

    def setup(self, stage: str) -> None:
        self.build()

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """The context in which the strategy does not all-reduce gradients (DDP ``no_sync``)."""
        trainer = self._trainer
        if trainer is not None and isinstance(trainer.strategy, ParallelStrategy):
            return trainer.strategy.block_backward_sync()
        return contextlib.nullcontext()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if self.scheduler_factory == "cosine":
            scheduler = cosine_schedule(optimizer, total)
        else:
            scheduler = self.scheduler_factory(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        wrapped = self.trainer.strategy.model
        if (isinstance(wrapped, nn.parallel.DistributedDataParallel) and not wrapped.find_unused_parameters
                and self.build().num_subnets > 0):
            raise ValueError("sub-networks skip blocks, so DDP needs find_unused_parameters=True: use "
                             "strategy='ddp_find_unused_parameters_true' or "
                             "DDPStrategy(find_unused_parameters=True)")

    def on_train_epoch_start(self) -> None:
        epochs = self.epochs or self.trainer.max_epochs
        if epochs is None or epochs < 1:
            if self.build().kl_schedule != "constant":
                raise ValueError("kl_schedule needs the number of epochs: set Trainer(max_epochs=...) or "
                                 "StimulativeModule(epochs=...)")
            epochs = 1
        self.build().set_epoch(self.current_epoch, epochs)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        optimizer = self.optimizers()
        losses = self.build()(x, y)
        if self.clip_grad > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip_grad, gradient_clip_algorithm="norm")
        lr = optimizer.param_groups[0]["lr"]          # the LR of this step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            for sch in scheduler if isinstance(scheduler, list) else [scheduler]:
                sch.step()
        self.last_losses = losses
        n = x.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log_dict({"train/main": losses["main"], "train/subnet": losses["subnet"]}, on_step=True,
                      on_epoch=True, batch_size=n)
        self.log_dict({"train/kl_weight": self.step.active_kl_weight,
                       "train/lr": lr}, on_step=True, on_epoch=False, batch_size=n)

    # ------------------------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        ed = self.build().ed
        for depth in [None, *(ed.min_depths if d == "min" else d for d in self.eval_depths)]:
            with ed.depth(depth):
                logits = self.model(x)
            suffix = "" if depth is None else f"@{_depth_key(depth)}"
            acc = (logits.argmax(-1) == y).float().mean()
            if depth is None:
                loss = F.cross_entropy(logits.float(), y)
                self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
            self.log(f"val/acc{suffix}", acc, prog_bar=depth is None, sync_dist=True, batch_size=x.shape[0])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)
