"""The LM commands as functions, for ``python -m stimulative.lm`` and for ``stimulative train/loafing/export`` to
dispatch to: ``is_lm_recipe(recipe)`` (``task: lm``) and ``is_lm_run(path)`` say when; each command prints what it
did and returns an exit status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from .config import is_lm_recipe, lm_config_to_dict, load_lm_config

__all__ = ["is_lm_recipe", "is_lm_run", "train_command", "loafing_command", "export_command"]


def is_lm_run(path: str | Path) -> bool:
    """True for an LM run directory (or a ``.pt`` inside one): its ``config.yaml`` says ``task: lm``."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    config = folder / "config.yaml"
    if not config.is_file():
        return False
    try:
        data = yaml.safe_load(config.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and data.get("task") == "lm"


def train_command(recipe: str | None, overrides: Sequence[str] = (), print_config: bool = False) -> int:
    """``stimulative train <lm recipe> key=value ...``."""
    if print_config:
        print(yaml.safe_dump(lm_config_to_dict(load_lm_config(recipe, overrides)), sort_keys=False), end="")
        return 0
    from .train import train_lm

    summary = train_lm(recipe, list(overrides))
    loss = summary["final"].get("val_loss")
    print(f"stimulative train: finished step {summary['step']}/{summary['steps']}"
          + (f"; val loss {loss:.4f} (full model)" if loss is not None else "") + f"; run in {summary['run_dir']}",
          flush=True)
    return 0


def loafing_command(runs: Sequence[str], alone: Sequence[str] = (), out: str | None = None,
                    val_blocks: int | None = None) -> int:
    """``stimulative loafing <lm runs> --individual <runs with fewer layers> --out DIR``."""
    from .loafing import lm_loafing

    out = out or str(Path(runs[0]).expanduser().parent / "loafing_lm")
    result = lm_loafing(list(runs), list(alone), out, val_blocks=val_blocks)
    for row in result["rows"]:
        rel = f" ({row['rel_to_alone']:+.1%} vs alone)" if "rel_to_alone" in row else ""
        print(f"{row['run']:>24} depth {row['depth']:>2}: loss {row['loss']:.4f} ppl {row['ppl']:.3f}{rel}")
    for k, row in sorted(result["alone"].items()):
        print(f"{row['run']:>24} depth {k:>2} trained alone: loss {row['loss']:.4f} ppl {row['ppl']:.3f}")
    print(f"wrote {out}/loafing_lm.json, .csv, .png", flush=True)
    return 0


def export_command(run: str, depth: int | str | None, output: str, evaluate: bool = False) -> int:
    """``stimulative export <lm run> --depth k -o DIR``: a ``save_pretrained`` directory with k layers."""
    from .export import export_lm

    print(json.dumps(export_lm(run, None if depth is None else int(depth), output, evaluate=evaluate), indent=1))
    return 0
