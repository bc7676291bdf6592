"""The Hugging Face ``Trainer`` integration: ``StimulativeTrainer`` runs ST/ST++ in ``transformers.Trainer``.

Usage::

    from stimulative.integrations.transformers import StimulativeTrainer
    trainer = StimulativeTrainer(model, transformers.TrainingArguments("out"), train_dataset=data,
                                 st_options={"num_subnets": 1})
    trainer.train()

The model adapters it uses (``elastic_depth``, ``extract_pretrained``, ``prefix_exits``, ``Logits``,
``find_layer_stages``, ``keep_layers``, ``output_tail``...) live in ``stimulative.hf``; importing them from here
still works with a ``DeprecationWarning`` until the next release.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import stimulative as st
from stimulative import hf as _hf
from stimulative._extras import require

transformers = require("transformers", "transformers", "stimulative.integrations.transformers")

__all__ = ["StimulativeTrainer", "is_causal_lm", "TRAINER_TASKS"]

# The model adapters of version 0.1.0's ``stimulative.integrations.transformers``: now in ``stimulative.hf``.
_MOVED = ("Logits", "HFElasticDepth", "LayerStage", "find_layer_stages", "elastic_depth", "extract_pretrained",
          "SUPPORTED_MODEL_TYPES", "keep_layers", "output_tail", "prefix_exits")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"stimulative.integrations.transformers.{name} is now stimulative.hf.{name} (from "
                      f"stimulative.hf import {name}); the old name is read until the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("stimulative.hf"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------------------
# Hugging Face Trainer
# --------------------------------------------------------------------------------------------------------------

TRAINER_TASKS = ("auto", "classification", "causal_lm")


def is_causal_lm(model: nn.Module) -> bool:
    """True for a ``transformers`` causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``...): its
    ``main_input_name`` is ``input_ids`` and its class is one of ``AutoModelForCausalLM``'s (or named
    ``...ForCausalLM`` / ``...LMHeadModel``).

    Args:
        model: a ``transformers`` model (or ``Logits`` around one).

    Example:
        >>> is_causal_lm(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2)))
        True
    """
    if isinstance(model, _hf.Logits):
        model = model.model
    if getattr(model, "main_input_name", None) != "input_ids":
        return False
    names: set[str] = set()
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - older layouts: the class name decides
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES = {}
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    name = type(model).__name__
    return name in names or name.endswith(("ForCausalLM", "LMHeadModel"))


def _causal_labels_match(ids: torch.Tensor, labels: torch.Tensor, pad_token_id: int | None = None) -> bool:
    """Whether HF-style causal-LM ``labels`` ask for what the token step trains: the ``ids`` themselves (with
    ``IGNORE_INDEX`` at padding), i.e. no prompt masking and no other targets. ``ids`` has -100 at padding; a
    label there may be anything (data collators differ). A real token equal to ``pad_token_id`` may carry -100:
    ``DataCollatorForLanguageModeling`` masks every pad id, and with ``pad_token = eos_token`` (the usual GPT-2 and
    Llama set-up) that includes the real EOS tokens."""
    from stimulative.core.tokens import IGNORE_INDEX

    if labels.shape != ids.shape:
        return False
    real = ids != IGNORE_INDEX
    same = labels == ids
    if pad_token_id is not None:
        same |= (labels == IGNORE_INDEX) & (ids == pad_token_id)
    return bool(same[real].all())


class StimulativeTrainer(transformers.Trainer):
    """``transformers.Trainer`` whose ``training_step`` runs ST/ST++ (``st.StimulativeStep``).

    Args (besides the ``Trainer`` ones; ``model`` must be a supported ``transformers`` model):
        st_options: keyword options of ``st.StimulativeStep`` (``num_subnets``, ``kl_norm``, ``min_input_scale``,
            ``kl_schedule``, ``start_epoch``, ``seed``, ``exits``...). ``backward``/``no_sync``/``model`` are set
            here.
        space: the ``st.SampleSpace``; default ordered over ``ed.full_depths`` seeded with ``args.seed``.
        task: ``"classification"`` (inputs and class labels), ``"causal_lm"`` (next-token prediction on
            ``input_ids``) or ``"auto"`` (the default): ``"causal_lm"`` when ``is_causal_lm(model)``.
        input_key: batch key of the inputs; default ``"pixel_values"`` (classification) or ``"input_ids"``
            (causal LM).
        label_key: batch key of the class labels (classification only).

    Classification: ``step(batch[input_key], batch[label_key])`` through ``stimulative.hf.Logits(model)``.

    Causal LM: the token-level step of ``stimulative.lm``, as an LM run (``stimulative train`` of a ``task: lm`` recipe) runs it. The ids are
    ``batch["input_ids"]`` with the positions where ``batch["attention_mask"]`` (if any) is 0 set to -100
    (``IGNORE_INDEX``); ``TokenLogits(model)`` masks them out of attention and the loss (left or right
    padding; unpadded packed blocks take the model's fast path) and the targets are
    ``next_token_targets(ids)``: main next-token CE and, per sub-network, the token-level KL (or KL-) to the
    detached full model, averaged over the real next-token positions of the micro-batch. Every real token after
    the first is a target: ``batch["labels"]``, if given, must equal ``input_ids`` at the real positions
    (what ``DataCollatorForLanguageModeling(mlm=False)`` makes; -100 on a real pad-id token, e.g. an EOS when
    ``pad_token = eos_token``, is accepted and that token stays a target); labels that mask a prompt or differ
    otherwise are refused with a ``ValueError`` (prompt masking is not supported). The prefix
    sub-networks are read off the main forward (``prefix_exits``: one forward and one backward per step) unless
    ``st_options["exits"]`` says otherwise (None: separate passes); ``min_input_scale`` and ``subnet_fraction``
    must stay 1.

    Every backward goes through ``self.accelerator.backward`` with the loss divided by the number of
    micro-batches of the optimizer step (as ``Trainer.training_step`` does), and all but the last backward of a
    step run in ``accelerator.no_sync(model)``. The recipe's per-epoch schedule (``start_epoch``,
    ``kl_schedule``) follows ``state.epoch``. ``self.ed`` is the ``ElasticDepth``; ``self.st_step`` the step; the
    mean main/sub-network losses are added to the logs as ``st_main`` and ``st_subnet``. Under DDP keep
    ``ddp_find_unused_parameters`` True (the default without gradient checkpointing). DeepSpeed is not supported.

    Example:
        >>> model = transformers.AutoModelForCausalLM.from_pretrained("my-llama")  # doctest: +SKIP
        >>> data = [{"input_ids": row} for row in blocks]  # (context + 1,) token ids each  # doctest: +SKIP
        >>> trainer = StimulativeTrainer(model, transformers.TrainingArguments("out"), train_dataset=data,
        ...                              st_options={"num_subnets": 1, "kl_norm": "plain"})  # doctest: +SKIP
        >>> trainer.task, trainer.train()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *args: Any, st_options: Mapping[str, Any] | None = None,
                 space: st.SampleSpace | None = None, input_key: str | None = None, label_key: str = "labels",
                 task: str = "auto", **kwargs: Any):
        if task not in TRAINER_TASKS:
            raise ValueError(f"task must be one of {', '.join(TRAINER_TASKS)}, got {task!r}")
        if task == "auto":
            task = "causal_lm" if is_causal_lm(model) else "classification"
        options = dict(st_options or {})
        for name in ("backward", "no_sync", "model"):
            if name in options:
                raise ValueError(f"st_options[{name!r}] is set by StimulativeTrainer")
        if task == "causal_lm":
            for name in ("min_input_scale", "subnet_fraction"):
                if options.get(name, 1.0) != 1.0:
                    raise ValueError(f"st_options[{name!r}] must be 1.0 with task='causal_lm' (random input sizes "
                                     f"and sample subsets are for images), got {options[name]}")
        self.ed = _hf.elastic_depth(model)
        super().__init__(model, *args, **kwargs)
        self.task = task
        self._st_rows: Any = None
        if task == "causal_lm":
            from stimulative.core.tokens import TokenLogits

            self._st_rows = TokenLogits(model)
            if "exits" not in options:
                options["exits"] = _hf.prefix_exits(self.ed, rows=self._st_rows.select_rows)
        if space is None:
            space = st.SampleSpace.ordered(self.ed.full_depths, self.ed.min_depths, seed=self.args.seed)
        self.st_step = st.StimulativeStep(self.ed, space, **options)
        self.input_key = input_key or ("input_ids" if task == "causal_lm" else "pixel_values")
        self.label_key = label_key
        self._st_sums = [0.0, 0.0, 0]
        self._st_wrappers: dict[int, nn.Module] = {}

    def _st_wrapper(self, model: nn.Module) -> nn.Module:
        """What the step calls: ``stimulative.hf.Logits(model)``, or ``TokenLogits(model)`` for a causal LM (``model`` may be
        the Accelerate/DDP wrapper)."""
        wrapper = self._st_wrappers.get(id(model))
        if wrapper is None:
            if self.task == "causal_lm":
                from stimulative.core.tokens import TokenLogits

                wrapper = TokenLogits(model)
            else:
                wrapper = _hf.Logits(model)
            self._st_wrappers[id(model)] = wrapper
        return wrapper

    def _st_batch(self, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the step: the inputs and labels, or the masked ids and their next tokens."""
        if self.task != "causal_lm":
            return inputs[self.input_key], inputs[self.label_key]
        from stimulative.core.tokens import IGNORE_INDEX, token_batch

        ids = inputs[self.input_key]
        mask = inputs.get("attention_mask")
        if mask is not None:
            ids = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels = inputs.get("labels")
        if labels is not None and not _causal_labels_match(ids, labels, self._pad_token_id()):
            # refuse rather than train on targets the user did not ask for (prompt masking, other labels)
            raise ValueError("batch['labels'] differs from the input_ids: StimulativeTrainer(task='causal_lm') "
                             "trains on every real next token (prompt masking and other labels are not "
                             "supported); drop 'labels' or make them equal to 'input_ids' (padding goes in "
                             "'attention_mask')")
        return token_batch(ids)

    def _pad_token_id(self) -> int | None:
        """The pad id of the tokenizer given to the Trainer, else of the model's config."""
        for source in (getattr(self, "processing_class", None), getattr(self.model, "config", None)):
            pad = getattr(source, "pad_token_id", None)
            if isinstance(pad, int):
                return pad
        return None

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        micro = max(1, int(getattr(self, "current_gradient_accumulation_steps", 1) or 1))
        step = self.st_step
        step.model = self._st_wrapper(model)
        step.backward = lambda loss: self.accelerator.backward(loss / micro)
        step.no_sync = lambda: self.accelerator.no_sync(model)
        epochs = getattr(self.state, "num_train_epochs", 0) or self.args.num_train_epochs
        step.set_epoch(int(self.state.epoch or 0), epochs)
        x, y = self._st_batch(inputs)
        with self.compute_loss_context_manager():
            losses = step(x, y)
        self._st_sums[0] += losses["main"]
        self._st_sums[1] += losses["subnet"]
        self._st_sums[2] += 1
        return torch.tensor(losses["loss"] / micro, device=self.args.device)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        main, subnet, count = self._st_sums
        if count and "loss" in logs:
            logs = {**logs, "st_main": main / count, "st_subnet": subnet / count}
            self._st_sums = [0.0, 0.0, 0]
        super().log(logs, *args, **kwargs)
