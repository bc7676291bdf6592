"""The model of a language-model run: ``build_lm(cfg, vocab_size)`` builds the ``transformers`` causal LM that
``cfg.model`` describes (random init, or with ``model.pretrained`` a ``save_pretrained`` directory or a GGUF file
whose pre-training it continues: ``resolve_pretrained`` checks the config against it first), and ``load_lm(run)``
(internal: ``stimulative.open_run`` is the public way) rebuilds a trained run's model with its weights and
tokenizer.

The split of the builders: ``stimulative.create_model(name)`` is the registry of image families;
``stimulative.train.model.build_model(cfg, num_classes)`` the model of an image recipe; ``build_lm(cfg, vocab)``
here the model of a language-model recipe. Opening a trained run of either kind is ``stimulative.open_run``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.log import console
from ..train.runtime import resolve_device
from .config import FAMILIES, ConfigError, LMConfig, LMModelConfig, lm_config_from_dict
from .data import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["build_lm", "resolve_pretrained", "LoadedLM", "FORMAT", "HF_CONFIG_DIR", "save_hf_config",
           "rebuild_pretrained"]

FORMAT = "stimulative-lm-v1"
HF_CONFIG_DIR = "hf_config"  # in the run dir of a model.pretrained run: config.json (+ generation, tokenizer files)


def _log(text: str) -> None:
    console(text)


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


def save_hf_config(model: nn.Module, tok: Any, run_dir: Path) -> Path:
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


def rebuild_pretrained(cfg: LMConfig, run_dir: Path) -> tuple[nn.Module, LMConfig]:
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
    return model.float(), _tokenizer_or_copy(cfg, source)


def _tokenizer_or_copy(cfg: LMConfig, copy: Path) -> LMConfig:
    """``cfg`` with ``data.tokenizer`` pointing to ``copy`` (a run's ``hf_config``) when the tokenizer directory it
    names is gone and the copy has tokenizer files."""
    spec = str(cfg.data.tokenizer)
    if spec != "byte" and not Path(spec).expanduser().is_dir() and _has_tokenizer(copy):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(copy)))
    return cfg


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


@dataclass
class LoadedLM:
    """A trained LM run: the hf model (eval mode, on ``device``), its config, tokenizer and checkpoint dict; an
    exit-adapter run (``adapter.layer``) also its ``exit_adapter`` (``stimulative.lm.adapter.ExitAdapter``)."""

    model: nn.Module
    config: LMConfig
    tokenizer: Any
    checkpoint: dict[str, Any]
    path: Path
    exit_adapter: nn.Module | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.checkpoint.get("history", []))


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> LoadedLM:
    """Rebuild the model of an LM run directory (or its ``last.pt``) and load the trained weights.

    A ``model.pretrained`` run is rebuilt from the config copied to ``RUN/hf_config`` (the original directory
    is not needed), else from ``model.pretrained``. An exit-adapter run's model is ``model.pretrained`` itself
    (frozen, so its checkpoint holds the adapter only): that directory or GGUF file must still be there."""
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path, map_location="cpu")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an LM run checkpoint (format {ckpt.get('format')!r})")
    data = dict(ckpt["config"])
    data["resume"] = None
    cfg = lm_config_from_dict(data)
    if ckpt.get("exit_adapter") is not None:
        return _load_adapter_run(cfg, ckpt, path, device)
    if cfg.model.pretrained:  # the architecture of the checkpoint it continued (the run's hf_config copy)
        model, cfg = rebuild_pretrained(cfg, path if path.is_dir() else path.parent)
        tok = load_tokenizer(cfg.data.tokenizer)
    else:
        tok = load_tokenizer(cfg.data.tokenizer)
        model = build_lm(cfg, int(ckpt["vocab_size"]), getattr(tok, "eos_token_id", None))
    model.load_state_dict(ckpt["model"])
    return LoadedLM(model.to(resolve_device(str(device))).eval(), cfg, tok, ckpt, path)


def _load_adapter_run(cfg: LMConfig, ckpt: dict[str, Any], path: Path, device: str | torch.device) -> LoadedLM:
    """An exit-adapter run: the frozen ``model.pretrained`` and the trained adapter (the checkpoint's "model")."""
    from .adapter import adapter_from_spec, check_teacher, model_fingerprint

    where = Path(str(cfg.model.pretrained)).expanduser()
    if not where.exists():
        raise ConfigError(f"{str(path)!r} is an exit-adapter run on model.pretrained {str(where)!r}, which is gone: "
                          "the run keeps the adapter only (the model was frozen); put the model back there, or "
                          "decode the model with --adapter RUN/exit_adapter.pt")
    cfg = _tokenizer_or_copy(cfg, (path if path.is_dir() else path.parent) / HF_CONFIG_DIR)
    tok = load_tokenizer(cfg.data.tokenizer)
    model = _from_pretrained(cfg, int(ckpt["vocab_size"]))
    check_teacher(ckpt["exit_adapter"], model_fingerprint(model), cfg.model.pretrained, path)
    dev = resolve_device(str(device))
    adapter = adapter_from_spec(ckpt["exit_adapter"], ckpt["model"]).to(dev)
    return LoadedLM(model.to(dev).eval(), cfg, tok, ckpt, path, exit_adapter=adapter)
