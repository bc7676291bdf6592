"""``train_lm``: train (or resume) a decoder-only LM with common training (CT), ST or ST++ from a recipe: the
language-model task of the one training engine (``stimulative.train``).

One run = a ``transformers`` causal LM built from ``cfg.model`` (``stimulative.lm.model``: no download; or, with
``model.pretrained``, a ``save_pretrained`` directory or a GGUF file whose pre-training it continues), made
depth-elastic by ``stimulative.hf``, trained on packed blocks of ``cfg.data`` (``stimulative.lm.data``) with the
recipe's ``StimulativeStep`` (main next-token CE + token-level KL/KL- of sampled prefix sub-networks),
LayerSkip, or (``adapter.layer=K``) an exit adapter on layer ``K`` of the frozen pretrained model
(``stimulative.lm.adapter``: only the adapter trains; its checkpoint holds the adapter, and the run writes
``exit_adapter.pt``, what ``stimulative generate MODEL --adapter`` reads)::

    from stimulative.lm.train import train_lm
    summary = train_lm("recipes/lm_llama_st.yaml", ["steps=300", "out_dir=/tmp/runs"])
    summary["final"]["val_loss"], summary["final"]["val_loss_d4"]

What is the engine's, as for image runs: the run directory (``train.rundir.open_run_dir``: the lock against two
writers, the overwrite guard, the checks of a resume whose recipe or data changed, leftovers of interrupted
writes), the checkpoint lookup (``resume=auto`` starts afresh without ``last.pt``, an explicit missing path is an
error), the optimizer and LR schedule (``train.optim``), the checkpoint layout and resume
(``train.state.TrainingState``, atomic ``save_checkpoint``), the step loop (``train.steps.train_steps``: clipping,
NaN/inf stop, progress lines), the metric files and console (``train.log``). What is the language model's: the
data (batch of step ``i`` = ``batch_size`` random windows of ``context + 1`` tokens from a generator seeded with
``(seed, i)``, so a resumed run sees the same batches), the model, the token step and the validation (loss and
perplexity of the full model and of the prefix depths ``eval_depths``, and each depth's top-1 agreement with the
full model ``val_agree_d<k>``). ``resume=auto`` continues from ``last.pt`` and ends with the same weights as an
uninterrupted run (CPU).

Command line: ``stimulative train recipes/lm_llama_st.yaml steps=300 threads=1`` (``task: lm``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.sampling import SampleSpace
from ..core.step import StimulativeStep, prefix_step_applies
from ..core.tokens import TokenLogits, next_token_targets
from ..hf import elastic_depth, prefix_exits
from ..train.checkpoint import resume_path, save_checkpoint
from ..train.config import apply_overrides
from ..train.log import MetricsLog, console
from ..train.optim import build_optimizer, matrix_decay_groups, step_scheduler
from ..train.resume import ResumePolicy
from ..train.rundir import open_run_dir
from ..train.runtime import Runtime
from ..train.state import TrainingState
from ..train.steps import StepClock, train_steps
from .adapter import (
    ADAPTER_FILE,
    ExitAdapter,
    adapter_loss,
    adapter_spec,
    check_teacher,
    evaluate_adapter,
    model_fingerprint,
    save_adapter,
)
from .config import (
    ConfigError,
    LMConfig,
    default_eval_depths,
    lm_config_from_dict,
    lm_config_to_dict,
    load_lm_config,
    save_lm_config,
)
from .data import LMData, load_lm_data
from .evaluate import depth_losses, perplexity
from .layerskip import LayerSkipStep
from .model import (
    FORMAT,
    HF_CONFIG_DIR,
    LoadedLM,
    _is_gguf_source,
    build_lm,
    rebuild_pretrained,
    resolve_pretrained,
    save_hf_config,
)

__all__ = ["train_lm", "LM_RESUME", "build_lm", "resolve_pretrained", "LMData", "load_lm_data", "LoadedLM", "FORMAT",
           "HF_CONFIG_DIR"]

# What a resumed LM run may change (train.resume): where and how it runs and what it validates are free;
# data.root/data.tokenizer may point elsewhere when the training tokens are the same (their fingerprint is
# checked); the optimizer's hyper-parameters and the run's length are applied from the checkpoint's step on.
LM_RESUME = ResumePolicy(
    free=frozenset({"name", "out_dir", "resume", "overwrite", "device", "threads", "eval_every", "save_every",
                    "eval_depths", "eval_batch_size", "log_every", "max_steps", "model.pretrained", "data.root", "data.tokenizer",
                    "data.val_blocks"}),
    applied=frozenset({"steps", "epochs", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.betas",
                       "optim.min_lr", "optim.warmup_steps", "optim.clip_grad"}),
    length=None, completed="step", unit="steps")


def _resume_copy(cfg: LMConfig) -> Path | None:
    """The run's ``hf_config`` copy when ``cfg`` resumes a ``model.pretrained`` run whose directory is gone (its
    config and tokenizer were copied there; the weights are the checkpoint's), else None."""
    if not cfg.model.pretrained or (Path(str(cfg.model.pretrained)).expanduser() / "config.json").is_file():
        return None
    if Path(str(cfg.model.pretrained)).expanduser().is_file() and _is_gguf_source(cfg.model.pretrained):
        return None  # a GGUF file that is still there: resolve_pretrained converts it (or reuses the cache)
    source = resume_path(cfg)
    copy = source.parent / HF_CONFIG_DIR if source is not None else None
    return copy if copy is not None and (copy / "config.json").is_file() else None




def _log(text: str) -> None:
    console(text)


def _exit_adapter(cfg: LMConfig, model: torch.nn.Module, layers: int, device: torch.device) -> ExitAdapter:
    """The run's exit adapter (``cfg.adapter``), on ``device``; a layer the model does not have is a
    ``ConfigError`` naming ``adapter.layer``."""
    if not 1 <= cfg.adapter.layer < layers:
        raise ConfigError(f"adapter.layer={cfg.adapter.layer} must be in 1..{layers - 1} (the model has {layers} "
                          "layers)")
    return ExitAdapter(int(model.config.hidden_size), cfg.adapter.layer, rank=cfg.adapter.rank).to(device)


def train_lm(cfg: LMConfig | str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train (or resume) the LM run of ``cfg``: an ``LMConfig``, or a recipe path (+ ``key=value`` overrides).

    Returns:
        ``{"run_dir", "step", "steps", "final", "checkpoint", "train_time_s", "train_cpu_s", "wall_s"}``; ``final`` is the last
        validation record (``val_loss``, ``val_ppl``, ``val_loss_d<k>``, ``val_ppl_d<k>``, ``val_agree_d<k>``,
        ``train_loss`` ...).

    Raises:
        RunDirError: the run directory is read-only, in use by another run, or holds another run (without
            ``overwrite=true``).
        ConfigError: a resume whose recipe or training data differ from the checkpoint's in what it must keep.
        FileNotFoundError: ``resume`` names a checkpoint that does not exist (``resume=auto`` starts afresh).
        NonFiniteLossError: a NaN/inf loss or weight; ``last.pt`` keeps the last validated step.
    """
    if not isinstance(cfg, LMConfig):
        cfg = load_lm_config(cfg, overrides)
    elif overrides:
        cfg = lm_config_from_dict(apply_overrides(lm_config_to_dict(cfg), list(overrides)))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("language-model runs train in one process (stimulative train without torchrun); for "
                          "several GPUs use the Hugging Face Trainer integration (docs/integrations/transformers.md)")
    runtime = Runtime.start(cfg)  # the device, threads
    start = None
    try:
        copy = _resume_copy(cfg)
        if copy is not None and cfg.adapter.layer:  # the copy has no weights, and an adapter run's checkpoint neither
            raise ConfigError(f"model.pretrained {cfg.model.pretrained} is gone: an exit-adapter run keeps the adapter "
                              "only (the model was frozen), so it resumes with the same model.pretrained; put the "
                              "model back there")
        if copy is None:
            cfg = resolve_pretrained(cfg)  # model.pretrained: architecture, tokenizer and context from the checkpoint
        else:  # resuming a model.pretrained run whose directory is gone: the run's copy of its config and tokenizer
            _log(f"model.pretrained {cfg.model.pretrained} is gone; resuming with the run's copy {copy} (the "
                 "weights come from the checkpoint)")
            original = str(Path(str(cfg.model.pretrained)).expanduser().absolute())
            cfg = resolve_pretrained(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                                        pretrained=str(copy))))
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=original))
        data = load_lm_data(cfg)
        start = open_run_dir(cfg, runtime.device, policy=LM_RESUME, fingerprint=data.fingerprint)
        return _train(cfg, runtime, data, copy, start)
    finally:
        if start is not None:
            start.lock.release()
        runtime.close()


def _train(cfg: LMConfig, runtime: Runtime, data: LMData, copy: Path | None, start: Any) -> dict[str, Any]:
    device, run_dir = runtime.device, cfg.run_dir
    for note in start.notes:
        console(note)
    spe = data.steps_per_epoch
    total = math.ceil(cfg.epochs * spe) if cfg.epochs > 0 else cfg.steps
    ckpt, source = start.checkpoint, start.source
    if ckpt is not None and (ckpt.get("exit_adapter") is not None) != bool(cfg.adapter.layer):
        kind = "an exit-adapter run" if ckpt.get("exit_adapter") is not None else "a run that trains the model"
        raise ConfigError(f"cannot resume {str(source)!r} with adapter.layer={cfg.adapter.layer}: it is {kind}; "
                          "start a new run with another name instead")
    if ckpt is not None and int(ckpt["step"]) > total:
        raise ConfigError(f"cannot resume {str(source)!r}: it has done {ckpt['step']} steps, this run has {total} "
                          "(steps/epochs may grow, not shrink)")
    val = data.val_batches(cfg.data.val_blocks, cfg.eval_batch_size)
    tok = data.tokenizer

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if copy is None:
        model = build_lm(cfg, tok.vocab_size, getattr(tok, "eos_token_id", None)).to(device)
    else:
        model = rebuild_pretrained(cfg, copy.parent)[0].train().to(device)  # the tokenizer is data's
    ed = elastic_depth(model)
    layers = ed.full_depths[0]
    depths = default_eval_depths(layers) if cfg.eval_depths is None else \
        sorted({d for d in cfg.eval_depths if d < layers})
    adapter = _exit_adapter(cfg, model, layers, device) if cfg.adapter.layer else None
    if adapter is not None:  # the model is frozen: what trains, is checkpointed and clipped is the adapter
        depths = [adapter.layer]
        model.requires_grad_(False).eval()
        val = [b.to(device) for b in val]
        teacher = model_fingerprint(model)
        if ckpt is not None:
            check_teacher(ckpt["exit_adapter"], teacher, cfg.model.pretrained, source)
    if cfg.model.pretrained:
        save_hf_config(model, tok, run_dir)
        _log(f"continuing {cfg.model.pretrained} ({type(model).__name__}), tokenizer {cfg.data.tokenizer}")
    trained = adapter if adapter is not None else model
    space = SampleSpace.for_model(ed, cfg.st.sampling, ranges=cfg.st.ranges, seed=cfg.seed,
                                  depths=cfg.st.depths)
    token_logits = TokenLogits(model)
    exits = prefix_exits(ed, rows=token_logits.select_rows) if cfg.st.prefix_exits or cfg.layerskip.enabled \
        else None
    step = StimulativeStep.from_config(cfg.st, ed, space, model=token_logits, seed=cfg.seed + 1, exits=exits)
    ls = cfg.layerskip
    layerskip = LayerSkipStep(ed, exits, total, p_max=ls.p_max, e_scale=ls.e_scale, rotation=ls.rotation,
                              time_schedule=ls.time_schedule, model=token_logits) if ls.enabled else None
    if exits is not None and cfg.st.num_subnets and prefix_step_applies(space, cfg.st.min_input_scale,
                                                                       cfg.st.subnet_fraction,
                                                                       cfg.st.project_conflicts):
        _log("sub-networks are read off the main forward (prefix exits: one forward and one backward per step; "
             "st.prefix_exits=false for separate passes)")
    optimizer = build_optimizer(trained, cfg, params=matrix_decay_groups(trained, cfg.optim.weight_decay))
    scheduler = step_scheduler(optimizer, cfg.optim, total, cfg.optim.warmup_steps)
    state = TrainingState(trained, optimizer, scheduler, step, steps_per_epoch=spe, by_step=True,
                          fingerprint=start.fingerprint)
    clock = StepClock()
    if ckpt is not None:
        state.restore(ckpt, device, source)
        if layerskip is not None:
            layerskip.calls = state.global_step
        clock = StepClock(float(ckpt.get("train_time_s", 0.0)), float(ckpt.get("wall_s", 0.0)),
                          None if ckpt.get("train_cpu_s") is None else float(ckpt["train_cpu_s"]))  # None (unknown) from checkpoints written before CPU time was kept
        if start.applied:
            _log(f"resume: applying {'; '.join(start.applied)}; the LR schedule follows the new config from step "
                 f"{state.global_step} (lr now {optimizer.param_groups[0]['lr']:.4g})")
        start.checkpoint = ckpt = None
    resolved = lm_config_to_dict(cfg)
    save_lm_config(cfg, run_dir / "config.yaml")
    log = MetricsLog(run_dir)
    log.write(state.history)
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    done = state.global_step
    method = (f"exit adapter on layer {adapter.layer} (rank {adapter.rank}, "
              f"{sum(p.numel() for p in adapter.parameters()):,} params; the model is frozen)" if adapter is not None
              else f"sub-networks/step {cfg.st.num_subnets} (kl_norm {cfg.st.kl_norm})"
              f"{', LayerSkip' if ls.enabled else ''}")
    _log(f"{'resuming ' + str(source) + ' at' if source else 'starting'} step {done}/{total}: "
         f"{cfg.model.family} {layers}x{cfg.model.hidden_size} ({sum(p.numel() for p in model.parameters()):,} "
         f"params), context {cfg.model.context}, batch {cfg.batch_size}, {method}, {len(data.train):,} train / "
         f"{len(data.val):,} val tokens, {spe} steps/epoch, device {device}, run dir {run_dir}")

    def run_step(i: int) -> dict[str, float]:
        ids = data.train_batch(i, cfg.batch_size, cfg.seed).to(device)
        if adapter is not None:  # the adapter's KL to the frozen full model is the run's one loss
            loss, stats = adapter_loss(model, adapter, ids)
            loss.backward()
            return {"loss": stats["kl"], "subnet": stats["kl"]}  # no main loss: its records say None, not 0
        if layerskip is not None:
            return layerskip(ids, next_token_targets(ids))
        step.set_epoch(i / spe, total / spe)
        return step(ids, next_token_targets(ids))

    def evaluate(done: int) -> dict[str, Any]:
        if adapter is not None:  # the full model is the start's; its exit at adapter.layer reads through the adapter
            res = evaluate_adapter(model, adapter, val)
            k = adapter.layer
            return {"val_loss": res["full_loss"], "val_ppl": perplexity(res["full_loss"]),
                    f"val_loss_d{k}": res["loss"], f"val_ppl_d{k}": perplexity(res["loss"]),
                    f"val_agree_d{k}": res["agree"], "val_tokens": res["tokens"]}
        result = depth_losses(ed, val, [*depths, layers], device=device)
        out = {"val_loss": result[layers]["loss"], "val_ppl": result[layers]["ppl"]}
        for k in depths:
            out[f"val_loss_d{k}"], out[f"val_ppl_d{k}"] = result[k]["loss"], result[k]["ppl"]
            out[f"val_agree_d{k}"] = result[k]["agree"]  # top-1 agreement with the full model
        out["val_tokens"] = result[layers]["tokens"]
        return out

    def save(record: dict[str, Any]) -> None:
        ckpt = state.checkpoint(resolved, None, record, device)
        ckpt.update({"format": FORMAT, "task": "lm", "vocab_size": tok.vocab_size, "steps": total,
                     "train_time_s": clock.train_s, "train_cpu_s": clock.cpu_s, "wall_s": clock.wall_s})
        if adapter is not None:  # "model" holds the adapter's weights; the model is model.pretrained's
            ckpt["exit_adapter"] = {**adapter_spec(adapter), "model_fingerprint": teacher}
            save_adapter(adapter, run_dir / ADAPTER_FILE, step=state.global_step, model=str(cfg.model.pretrained))
        save_checkpoint(ckpt, run_dir / "last.pt")
        log.write(state.history)

    def describe(r: dict[str, Any]) -> str:
        if adapter is not None:
            k = adapter.layer
            return (f"eval step {r['step']}/{total}: exit {k} through the adapter: val loss {r[f'val_loss_d{k}']:.4f}, "
                    f"agreement {100 * r[f'val_agree_d{k}']:.1f}% | full model {r['val_loss']:.4f} (frozen) | "
                    f"train KL {r['train_loss']:.4f} | {r['tokens_per_s']:.0f} tok/s")
        return (f"eval step {r['step']}/{total}: val loss {r['val_loss']:.4f} (ppl {r['val_ppl']:.3f})"
                + "".join(f" | d{k} {r[f'val_loss_d{k}']:.4f} ({100 * r[f'val_agree_d{k}']:.0f}%)" for k in depths)
                + f" | train {r['train_loss_main']:.4f} | {r['tokens_per_s']:.0f} tok/s")

    record = train_steps(state, run_step, total=total, stop_at=stop_at, steps_per_epoch=spe,
                         clip_grad=cfg.optim.clip_grad, eval_every=cfg.eval_every, log_every=cfg.log_every,
                         run_dir=run_dir, evaluate=evaluate, save=save, describe=describe,
                         units_per_step=cfg.batch_size * cfg.model.context, unit="tokens", clock=clock,
                         save_every=cfg.save_every)
    log.close()
    done = state.global_step
    if done < total:
        _log(f"stopped at step {done}/{total} (max_steps); continue with resume=auto")
    return {"run_dir": str(run_dir), "step": done, "steps": total, "final": record,
            "checkpoint": str(run_dir / "last.pt"), "train_time_s": clock.train_s,
            "train_cpu_s": clock.cpu_s, "wall_s": clock.wall_s}


_DEPRECATED = ("load_lm",)  # imported from here before ``stimulative.open_run`` opened LM runs
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(f"stimulative.lm.train.{name} is deprecated: open a trained run with "
                          "stimulative.open_run(path) (run.model, run.tokenizer, run.config); the old name is read "
                          "until the next release", DeprecationWarning, stacklevel=2)
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
