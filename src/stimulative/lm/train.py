"""``train_lm``: train (or resume) a decoder-only LM with common training (CT), ST or ST++ from a recipe.

One run = a ``transformers`` causal LM built from ``cfg.model`` (no download; or, with ``model.pretrained``, a
``save_pretrained`` directory whose pre-training it continues: ``resolve_pretrained``), made depth-elastic by
``stimulative.integrations.transformers``, trained on packed blocks of ``cfg.data`` with the recipe's
``StimulativeStep`` (main next-token CE + token-level KL/KL- of sampled prefix sub-networks)::

    from stimulative.lm.train import train_lm
    summary = train_lm("recipes/lm_llama_st.yaml", ["steps=300", "out_dir=/tmp/runs"])
    summary["final"]["val_loss"], summary["final"]["val_loss_d4"]

The hot loop, per optimizer step ``i``: the ST schedule at fractional epoch ``i / steps_per_epoch``, the batch
of step ``i`` (``batch_size`` random windows of ``context + 1`` tokens drawn by a generator seeded with
``(seed, i)``, so a resumed run sees the same batches), ``step(ids, next_token_targets(ids))`` (forward and
backward of the main network and the sub-networks; prefix sub-networks are read off the main forward), gradient clipping, ``optimizer.step()``, the per-iteration LR schedule.
Every ``eval_every`` steps and at the end: validation loss/perplexity of the full model and of the prefix depths
``eval_depths`` (one ``metrics.jsonl`` record), then ``last.pt`` written atomically. The run directory holds
``config.yaml``, ``metrics.jsonl``/``.csv`` and ``last.pt``; ``resume=auto`` continues from ``last.pt`` and
ends with the same weights as an uninterrupted run (CPU).

Command line (until ``stimulative train`` dispatches ``task: lm`` recipes here)::

    python -m stimulative.lm train recipes/lm_llama_st.yaml steps=300 threads=1
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.sampling import SampleSpace
from ..core.step import StimulativeStep, prefix_step_applies
from ..core.tokens import TokenLogits, next_token_targets
from ..provenance import run_start
from ..train.checkpoint import load_checkpoint, save_checkpoint
from ..train.log import MetricsLog
from ..train.optim import lr_factor
from ..train.runtime import resolve_device
from .config import (
    FAMILIES,
    ConfigError,
    LMConfig,
    LMModelConfig,
    default_eval_depths,
    lm_config_from_dict,
    lm_config_to_dict,
    load_lm_config,
    save_lm_config,
)
from .data import (
    TEXT_SUFFIXES,
    ByteTokenizer,
    HFTokenizer,
    PackedBlocks,
    corpus_files,
    encode_files,
    load_tokenizer,
    stdlib_files,
)
from .evaluate import depth_losses
from .layerskip import LayerSkipStep

__all__ = ["train_lm", "build_lm", "resolve_pretrained", "LMData", "load_lm_data", "load_lm", "LoadedLM", "FORMAT",
           "HF_CONFIG_DIR"]

FORMAT = "stimulative-lm-v1"
HF_CONFIG_DIR = "hf_config"  # in the run dir of a model.pretrained run: config.json (+ generation, tokenizer files)


# --------------------------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


def _is_gguf_source(value: Any) -> bool:
    """``model.pretrained`` names a GGUF file (a ``.gguf`` path, or a file with the GGUF magic bytes)."""
    from .gguf import is_gguf

    path = Path(str(value)).expanduser()
    return not path.is_dir() and (path.suffix.lower() == ".gguf" or is_gguf(path))


def _gguf_pretrained(path: Path) -> Path:
    """A GGUF ``model.pretrained``: its converted directory in the GGUF cache (``stimulative.lm.gguf.cached_gguf``:
    converted on first use, reused after); what cannot be converted is a ``ConfigError`` naming the key."""
    from .gguf import GGUFError, cached_gguf

    if not path.is_file():
        raise ConfigError(f"model.pretrained {str(path)!r} does not exist (a .gguf file or a save_pretrained folder)")
    t0 = time.perf_counter()
    try:
        out, converted = cached_gguf(path)
    except GGUFError as err:
        raise ConfigError(f"model.pretrained: {err}") from err
    _log(f"model.pretrained {path}: converted to {out} in {time.perf_counter() - t0:.1f} s" if converted
         else f"model.pretrained {path}: using its conversion {out}")
    return out


def _pretrained_dir(cfg: LMConfig) -> Path:
    """``cfg.model.pretrained`` as a path (a GGUF file: its converted directory, ``_gguf_pretrained``); a
    ``ConfigError`` naming the key when it is not a model directory."""
    path = Path(str(cfg.model.pretrained)).expanduser()
    if _is_gguf_source(path):
        return _gguf_pretrained(path)
    if not path.is_dir():
        raise ConfigError(f"model.pretrained {cfg.model.pretrained!r} is not a directory (give the folder written "
                          "by model.save_pretrained, or a .gguf file)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.pretrained {cfg.model.pretrained!r} has no config.json (give the folder written "
                          "by model.save_pretrained)")
    return path


def _arch_of(hf_config: Any, where: Path) -> dict[str, Any]:
    """The ``LMModelConfig`` architecture keys of a ``transformers`` config (llama and gpt2 only)."""
    family = getattr(hf_config, "model_type", None)
    if family not in FAMILIES:
        raise ConfigError(f"model.pretrained {str(where)!r} is a {family!r} model; supported: "
                          f"{', '.join(FAMILIES)} (LlamaForCausalLM, GPT2LMHeadModel)")
    inter = getattr(hf_config, "n_inner" if family == "gpt2" else "intermediate_size", None)
    return {"family": family, "num_hidden_layers": int(hf_config.num_hidden_layers),
            "hidden_size": int(hf_config.hidden_size), "intermediate_size": int(inter or 0),
            "num_attention_heads": int(hf_config.num_attention_heads),
            "num_key_value_heads": int(getattr(hf_config, "num_key_value_heads", 0) or 0) if family == "llama" else 0,
            "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False))}


def _check_vocab(tok: Any, spec: str, vocab_size: int, where: Path) -> None:
    """A tokenizer whose ids the pretrained embedding cannot take (or a byte tokenizer on another vocabulary)
    is a ``ConfigError`` naming ``data.tokenizer``."""
    n = int(tok.vocab_size)
    if isinstance(tok, ByteTokenizer) and n != vocab_size:
        raise ConfigError(f"data.tokenizer=byte has {n} tokens but model.pretrained {str(where)!r} has vocab_size="
                          f"{vocab_size} and no tokenizer files; set data.tokenizer to the checkpoint's tokenizer "
                          "directory")
    if n > vocab_size:
        raise ConfigError(f"data.tokenizer {spec!r} has {n} tokens but model.pretrained {str(where)!r} has "
                          f"vocab_size={vocab_size}; use the checkpoint's own tokenizer")


def resolve_pretrained(cfg: LMConfig) -> LMConfig:
    """The config of a ``model.pretrained`` run as trained: architecture, tokenizer and context checked against
    the checkpoint (a copy; ``cfg`` itself is unchanged; without ``model.pretrained`` it is returned as is).

    * ``model.family`` and the sizes (``num_hidden_layers``, ``hidden_size``, ``intermediate_size``,
      ``num_attention_heads``, ``num_key_value_heads``, ``tie_word_embeddings``) are the checkpoint's; a key set
      to neither its default nor the checkpoint's value is a ``ConfigError`` naming it.
    * ``data.tokenizer=byte`` (the default) with tokenizer files in the directory: its tokenizer is used. A
      tokenizer with more tokens than the model's ``vocab_size``, or the byte tokenizer (257 tokens) on another
      vocabulary, is a ``ConfigError``.
    * ``model.context + 1`` (a training row) must fit the checkpoint's ``max_position_embeddings``.
    * ``model.pretrained`` and a tokenizer taken from it become absolute paths (the run's ``config.yaml``).

    Args:
        cfg: a validated ``LMConfig``.

    Example:
        >>> cfg = resolve_pretrained(load_lm_config(None, ["model.pretrained=my-llama", "model.context=128"]))
        ... # doctest: +SKIP
        >>> cfg.model.num_hidden_layers  # the checkpoint's  # doctest: +SKIP
        12
    """
    if not cfg.model.pretrained:
        return cfg
    import transformers

    path = _pretrained_dir(cfg)
    hf_config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    arch = _arch_of(hf_config, path)
    defaults = LMModelConfig()
    for key, value in arch.items():
        given = getattr(cfg.model, key)
        if given != getattr(defaults, key) and given != value:
            raise ConfigError(f"model.{key}={given} conflicts with model.pretrained {str(path)!r} ({key}={value}); "
                              f"drop model.{key}: the architecture comes from the checkpoint")
    positions = getattr(hf_config, "max_position_embeddings", None)
    if positions and cfg.model.context + 1 > int(positions):
        raise ConfigError(f"model.context={cfg.model.context} is too long for model.pretrained {str(path)!r}: a "
                          f"training row is context + 1 tokens and it has max_position_embeddings={positions}; "
                          f"set model.context <= {int(positions) - 1}")
    spec = str(cfg.data.tokenizer)
    if spec == "byte" and _has_tokenizer(path):
        spec = str(path.resolve())
    _check_vocab(load_tokenizer(spec), spec, int(hf_config.vocab_size), path)
    model = dataclasses.replace(cfg.model, **arch, pretrained=str(path.resolve()))
    return dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, tokenizer=spec))


def _from_pretrained(cfg: LMConfig, vocab_size: int) -> nn.Module:
    import transformers

    path = _pretrained_dir(cfg)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    _arch_of(model.config, path)
    if vocab_size > model.config.vocab_size:
        raise ConfigError(f"data.tokenizer has {vocab_size} tokens but model.pretrained {str(path)!r} has vocab_size="
                          f"{model.config.vocab_size}; use the checkpoint's own tokenizer")
    return model.float().train()  # trained in float32 whatever the checkpoint's dtype


def _save_hf_config(model: nn.Module, tok: Any, run_dir: Path) -> Path:
    """``run_dir/hf_config``: the model's config (+ generation config and a transformers tokenizer), so that
    ``load_lm`` rebuilds a ``model.pretrained`` run without the original directory."""
    out = run_dir / HF_CONFIG_DIR
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if isinstance(tok, HFTokenizer):
        tok.tokenizer.save_pretrained(out)
    return out


def _rebuild_pretrained(cfg: LMConfig, run_dir: Path) -> tuple[nn.Module, LMConfig]:
    """The (randomly initialised) model and the config of a ``model.pretrained`` run: from the
    run's ``hf_config`` copy, else from ``model.pretrained`` itself (``data.tokenizer`` points to the copy when
    the tokenizer directory is gone)."""
    import transformers

    source = run_dir / HF_CONFIG_DIR
    if not (source / "config.json").is_file():
        source = Path(str(cfg.model.pretrained)).expanduser()
        if not (source / "config.json").is_file():
            raise ConfigError(f"model.pretrained {cfg.model.pretrained!r} has no config.json and the run "
                              f"{str(run_dir)!r} has no {HF_CONFIG_DIR}/: cannot rebuild its model")
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(str(source), local_files_only=True))
    if (source / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(str(source), local_files_only=True)
    spec = str(cfg.data.tokenizer)
    if spec != "byte" and not Path(spec).expanduser().is_dir() and _has_tokenizer(source):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(source)))
    return model.float(), cfg


def build_lm(cfg: LMConfig, vocab_size: int, eos_token_id: int | None = None) -> nn.Module:
    """The ``transformers`` causal LM of ``cfg.model`` (random init from the global torch seed), in train mode.

    A training row is ``context + 1`` tokens (``context`` next-token predictions), so the model has
    ``context + 1`` positions. With ``model.pretrained`` the model is
    ``AutoModelForCausalLM.from_pretrained(model.pretrained, local_files_only=True)`` in float32 (the sizes and
    ``eos_token_id`` are the checkpoint's; ``resolve_pretrained`` checks a config against it first).

    Args:
        cfg: the run's config (``cfg.model``).
        vocab_size: the tokenizer's vocabulary (with ``model.pretrained``: at most the checkpoint's).
        eos_token_id: the end-of-text id (bos/eos/pad of a new model).

    Example:
        >>> model = build_lm(load_lm_config(None, ["model.num_hidden_layers=2"]), vocab_size=257)  # doctest: +SKIP
    """
    if cfg.model.pretrained:
        return _from_pretrained(cfg, vocab_size)
    import transformers

    m = cfg.model
    common = {"vocab_size": vocab_size, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
              "pad_token_id": eos_token_id, "tie_word_embeddings": m.tie_word_embeddings}
    if m.family == "llama":
        inter = m.intermediate_size or 8 * ((8 * m.hidden_size // 3 + 7) // 8)
        config = transformers.LlamaConfig(hidden_size=m.hidden_size, intermediate_size=inter,
                                          num_hidden_layers=m.num_hidden_layers,
                                          num_attention_heads=m.num_attention_heads,
                                          num_key_value_heads=m.num_key_value_heads or m.num_attention_heads,
                                          max_position_embeddings=m.context + 1, **common)
        model = transformers.LlamaForCausalLM(config)
    elif m.family == "gpt2":
        config = transformers.GPT2Config(n_embd=m.hidden_size, n_layer=m.num_hidden_layers,
                                         n_head=m.num_attention_heads, n_positions=m.context + 1,
                                         n_inner=m.intermediate_size or None, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, **common)
        model = transformers.GPT2LMHeadModel(config)
    else:
        raise ValueError(f"model.family must be llama or gpt2, got {m.family!r}")
    model.generation_config.pad_token_id = eos_token_id
    return model.train()


def _split_files(cfg: LMConfig) -> dict[str, Any]:
    root = cfg.data.root
    if root in (None, "stdlib"):  # the demo corpus: its source and text files, as the benchmarks were made
        return corpus_files(stdlib_files(), cfg.data.val_fraction, TEXT_SUFFIXES)
    splits = corpus_files(Path(root).expanduser(), cfg.data.val_fraction)
    if splits["skipped"]:
        _log(f"data: {splits['skipped']} binary or empty files under {root} skipped")
    return splits


@dataclass
class LMData:
    """The token streams of a run: ``train`` (1-D, may be None when only validating) and ``val``."""

    train: torch.Tensor | None
    val: torch.Tensor
    tokenizer: Any
    context: int
    steps_per_epoch: int = 1  # steps of batch_size blocks that cover the training tokens once

    def train_batch(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """The ``(batch_size, context + 1)`` int64 batch of optimizer step ``step``: random windows of the
        training stream from a generator seeded with ``(seed, step)`` (the same batch on resume)."""
        t = self.context + 1
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train) - t + 1, (batch_size,), generator=g)
        return self.train[starts[:, None] + torch.arange(t)].long()

    def val_batches(self, num_blocks: int = 0, batch_size: int = 32) -> list[torch.Tensor]:
        """``num_blocks`` (0 = all) validation blocks evenly spaced over the val stream, in batches."""
        blocks = PackedBlocks(self.val, self.context)
        n = len(blocks)
        idx = range(n) if not num_blocks or num_blocks >= n else \
            sorted({round(i * (n - 1) / max(num_blocks - 1, 1)) for i in range(num_blocks)})
        rows = [blocks[i] for i in idx]
        return [torch.stack(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def load_lm_data(cfg: LMConfig, train: bool = True) -> LMData:
    """Tokenize ``cfg.data`` (``train=False``: the validation split only)."""
    tok = load_tokenizer(cfg.data.tokenizer)
    splits = _split_files(cfg)
    cut = splits.get("val_bytes")
    limit = cfg.data.max_bytes or None
    val = encode_files(splits["val"], tok, start_byte=cut or 0, max_bytes=limit)
    tr = encode_files(splits["train"], tok, end_byte=cut, max_bytes=limit) if train else None
    need = cfg.model.context + 2
    if tr is not None and len(tr) < need or len(val) < need:
        raise ValueError(f"the data of {cfg.data.root or 'stdlib'} is shorter than one block of {need} tokens "
                         "(lower model.context or add text)")
    spe = max(1, len(tr) // (cfg.batch_size * cfg.model.context)) if tr is not None else 1
    return LMData(tr, val, tok, cfg.model.context, spe)


# --------------------------------------------------------------------------------------------------------------
# Optimizer, schedule, checkpoint
# --------------------------------------------------------------------------------------------------------------

def _optimizer(model: nn.Module, cfg: LMConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: LMConfig, total: int):
    o = cfg.optim
    if o.schedule == "onecycle":
        pct = o.warmup_steps / total if o.warmup_steps else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=total,
                                                   pct_start=min(max(pct, 1e-3), 0.99))
    warmup, ratio = min(o.warmup_steps, total), o.min_lr / o.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, total, warmup, o.schedule, ratio))


def _resume_path(cfg: LMConfig) -> Path | None:
    if cfg.resume is None:
        return None
    path = cfg.run_dir / "last.pt" if cfg.resume == "auto" else Path(cfg.resume).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    return path if path.is_file() else None


def _resume_copy(cfg: LMConfig) -> Path | None:
    """The run's ``hf_config`` copy when ``cfg`` resumes a ``model.pretrained`` run whose directory is gone (its
    config and tokenizer were copied there; the weights are the checkpoint's), else None."""
    if not cfg.model.pretrained or (Path(str(cfg.model.pretrained)).expanduser() / "config.json").is_file():
        return None
    if Path(str(cfg.model.pretrained)).expanduser().is_file() and _is_gguf_source(cfg.model.pretrained):
        return None  # a GGUF file that is still there: resolve_pretrained converts it (or reuses the cache)
    source = _resume_path(cfg)
    copy = source.parent / HF_CONFIG_DIR if source is not None else None
    return copy if copy is not None and (copy / "config.json").is_file() else None


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


@dataclass
class LoadedLM:
    """A trained LM run: the hf model (eval mode, on ``device``), its config, tokenizer and checkpoint dict."""

    model: nn.Module
    config: LMConfig
    tokenizer: Any
    checkpoint: dict[str, Any]
    path: Path

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.checkpoint.get("history", []))


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> LoadedLM:
    """Rebuild the model of an LM run directory (or its ``last.pt``) and load the trained weights.

    A ``model.pretrained`` run is rebuilt from the config copied to ``RUN/hf_config`` (the original directory
    is not needed), else from ``model.pretrained``."""
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path, map_location="cpu")
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an LM run checkpoint (format {ckpt.get('format')!r})")
    data = dict(ckpt["config"])
    data["resume"] = None
    cfg = lm_config_from_dict(data)
    if cfg.model.pretrained:  # the architecture of the checkpoint it continued (the run's hf_config copy)
        model, cfg = _rebuild_pretrained(cfg, path if path.is_dir() else path.parent)
        tok = load_tokenizer(cfg.data.tokenizer)
    else:
        tok = load_tokenizer(cfg.data.tokenizer)
        model = build_lm(cfg, int(ckpt["vocab_size"]), getattr(tok, "eos_token_id", None))
    model.load_state_dict(ckpt["model"])
    return LoadedLM(model.to(resolve_device(str(device))).eval(), cfg, tok, ckpt, path)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------

def _log(text: str) -> None:
    print(text, flush=True)


def train_lm(cfg: LMConfig | str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train (or resume) the LM run of ``cfg``: an ``LMConfig``, or a recipe path (+ ``key=value`` overrides).

    Returns:
        ``{"run_dir", "step", "steps", "final", "checkpoint", "train_time_s", "wall_s"}``; ``final`` is the last
        validation record (``val_loss``, ``val_ppl``, ``val_loss_d<k>``, ``val_ppl_d<k>``, ``train_loss`` ...).
    """
    if not isinstance(cfg, LMConfig):
        cfg = load_lm_config(cfg, overrides)
    elif overrides:
        from ..train.config import apply_overrides

        cfg = lm_config_from_dict(apply_overrides(lm_config_to_dict(cfg), list(overrides)))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    copy = _resume_copy(cfg)
    if copy is None:
        cfg = resolve_pretrained(cfg)  # model.pretrained: architecture, tokenizer and context from the checkpoint
    else:  # resuming a model.pretrained run whose directory is gone: the run's copy of its config and tokenizer
        _log(f"model.pretrained {cfg.model.pretrained} is gone; resuming with the run's copy {copy} (the weights "
             "come from the checkpoint)")
        original = str(Path(str(cfg.model.pretrained)).expanduser().absolute())
        cfg = resolve_pretrained(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(copy))))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=original))
    device = resolve_device(cfg.device)
    run_dir = cfg.run_dir
    data = load_lm_data(cfg)
    spe = data.steps_per_epoch
    total = math.ceil(cfg.epochs * spe) if cfg.epochs > 0 else cfg.steps
    val = data.val_batches(cfg.data.val_blocks, cfg.eval_batch_size)
    tok = data.tokenizer

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if copy is None:
        model = build_lm(cfg, tok.vocab_size, getattr(tok, "eos_token_id", None)).to(device)
    else:
        model = _rebuild_pretrained(cfg, copy.parent)[0].train().to(device)  # the tokenizer is data's
    if cfg.model.pretrained:
        _save_hf_config(model, tok, run_dir)
        _log(f"continuing {cfg.model.pretrained} ({type(model).__name__}), tokenizer {cfg.data.tokenizer}")
    from ..hf import elastic_depth, prefix_exits

    ed = elastic_depth(model)
    layers = ed.full_depths[0]
    depths = default_eval_depths(layers) if cfg.eval_depths is None else sorted({d for d in cfg.eval_depths if d < layers})
    space = SampleSpace.for_model(ed, cfg.st.sampling, ranges=cfg.st.ranges, seed=cfg.seed)
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
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg, total)
    history: list[dict[str, Any]] = []
    done, train_time, wall = 0, 0.0, 0.0
    starts = [run_start()]  # provenance: one record per start of the run (stimulative.provenance)

    source = _resume_path(cfg)
    if source is not None:
        ckpt = load_checkpoint(source, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        space.rng.setstate(_as_tuple(ckpt["space_rng"]))
        step.rng.setstate(_as_tuple(ckpt["step_rng"]))
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and device.type == "cuda":  # layer dropout draws on the GPU
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        done, history = int(ckpt["step"]), list(ckpt.get("history", []))
        train_time, wall = float(ckpt.get("train_time_s", 0.0)), float(ckpt.get("wall_s", 0.0))
        starts = [*ckpt.get("starts", []), *starts]
        step.calls = done
        if layerskip is not None:
            layerskip.calls = done
        if ckpt.get("steps") != total:
            raise ValueError(f"cannot resume {source}: it was a run of {ckpt.get('steps')} steps, this one has {total}")
    resolved = lm_config_to_dict(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_lm_config(cfg, run_dir / "config.yaml")
    log = MetricsLog(run_dir)
    log.write(history)
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    _log(f"{'resuming ' + str(source) + ' at' if source else 'starting'} step {done}/{total}: "
         f"{cfg.model.family} {layers}x{cfg.model.hidden_size} ({sum(p.numel() for p in model.parameters()):,} "
         f"params), context {cfg.model.context}, batch {cfg.batch_size}, sub-networks/step {cfg.st.num_subnets} "
         f"(kl_norm {cfg.st.kl_norm}){', LayerSkip' if ls.enabled else ''}, {len(data.train):,} train / {len(data.val):,} val tokens, {spe} steps/epoch, "
         f"device {device}, run dir {run_dir}")

    sums = {"loss": 0.0, "main": 0.0, "subnet": 0.0}
    count, last_log = 0, time.perf_counter()
    record: dict[str, Any] = history[-1] if history else {}
    model.train()
    t_start = time.perf_counter()
    for i in range(done, stop_at):
        t0 = time.perf_counter()
        ids = data.train_batch(i, cfg.batch_size, cfg.seed).to(device)
        if layerskip is not None:
            losses = layerskip(ids, next_token_targets(ids))
        else:
            step.set_epoch(i / spe, total / spe)
            losses = step(ids, next_token_targets(ids))
        if cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        train_time += time.perf_counter() - t0
        for key in sums:
            sums[key] += losses[key]
        count += 1
        done = i + 1
        if done % cfg.log_every == 0:
            now = time.perf_counter()
            _log(f"step {done}/{total} loss {losses['loss']:.4f} (main {losses['main']:.4f} sub "
                 f"{losses['subnet']:.4f}) lr {scheduler.get_last_lr()[0]:.3g} "
                 f"{cfg.log_every * cfg.batch_size * cfg.model.context / (now - last_log):.0f} tok/s")
            last_log = now
        if done % cfg.eval_every and done not in (total, stop_at):
            continue
        t1 = time.perf_counter()
        result = depth_losses(ed, val, [*depths, layers], device=device)
        record = {"step": done, "epoch": done / spe, "lr": scheduler.get_last_lr()[0],
                  "train_loss": sums["loss"] / count, "train_loss_main": sums["main"] / count,
                  "train_loss_subnet": sums["subnet"] / count,
                  "val_loss": result[layers]["loss"], "val_ppl": result[layers]["ppl"]}
        for k in depths:
            record[f"val_loss_d{k}"], record[f"val_ppl_d{k}"] = result[k]["loss"], result[k]["ppl"]
            record[f"val_agree_d{k}"] = result[k]["agree"]  # top-1 agreement with the full model
        wall += time.perf_counter() - t_start
        t_start = time.perf_counter()
        record.update(val_tokens=result[layers]["tokens"], eval_time_s=t_start - t1, train_time_s=train_time,
                      wall_s=wall, tokens_per_s=done * cfg.batch_size * cfg.model.context / max(train_time, 1e-9))
        history.append(record)
        sums, count = {k: 0.0 for k in sums}, 0
        save_checkpoint({"format": FORMAT, "task": "lm", "model": model.state_dict(), "config": resolved,
                         "vocab_size": tok.vocab_size, "step": done, "steps": total,
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "space_rng": space.rng.getstate(), "step_rng": step.rng.getstate(),
                         "torch_rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                         "history": history, "metrics": record, "starts": starts,
                         "train_time_s": train_time, "wall_s": wall}, run_dir / "last.pt")
        log.write(history)
        _log(f"eval step {done}/{total}: val loss {record['val_loss']:.4f} (ppl {record['val_ppl']:.3f})"
             + "".join(f" | d{k} {record[f'val_loss_d{k}']:.4f} ({100 * record[f'val_agree_d{k}']:.0f}%)"
                       for k in depths)
             + f" | train {record['train_loss_main']:.4f} | {record['tokens_per_s']:.0f} tok/s")
    log.close()
    if done < total:
        _log(f"stopped at step {done}/{total} (max_steps); continue with resume=auto")
    return {"run_dir": str(run_dir), "step": done, "steps": total, "final": record,
            "checkpoint": str(run_dir / "last.pt"), "train_time_s": train_time, "wall_s": wall}

