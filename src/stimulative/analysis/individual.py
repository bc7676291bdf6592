"""Training the "alone" baselines of the loafing analysis: the same sub-network architectures trained by themselves.

A sub-network ``(d_1, d_2, d_3)`` of a CIFAR ResNet is the CIFAR ResNet built with ``d_i`` blocks per stage, so
its individual baseline is the same recipe with the model's depth changed: ``model.name=cifar_resnet20`` for
``3,3,3`` (6n+2 layers), otherwise ``model.kwargs.blocks_per_stage=[d_1, d_2, d_3]``.

Example:
    >>> individual_model_overrides("cifar_resnet56", [3, 3, 3])
    ['model.name=cifar_resnet20']
    >>> individual_model_overrides("cifar_resnet56", [1, 2, 3])
    ['model.kwargs.blocks_per_stage=[1,2,3]']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..models import list_models
from ..train.config import load_config
from .runs import format_depths

__all__ = ["individual_model_overrides", "train_individuals"]


def individual_model_overrides(model_name: str, depths: Sequence[int]) -> list[str]:
    """Config overrides that turn a recipe's model into the architecture of sub-network ``depths``."""
    depths = [int(d) for d in depths]
    if re.fullmatch(r"cifar_resnet\d+", model_name) and len(set(depths)) == 1:
        name = f"cifar_resnet{6 * depths[0] + 2}"
        if name in list_models():
            return [f"model.name={name}"]
    return [f"model.kwargs.blocks_per_stage=[{format_depths(depths)}]"]


def train_individuals(recipe: str | Path, configs: Sequence[Sequence[int]], out_dir: str | Path,
                      overrides: Sequence[str] = ()) -> list[Path]:
    """Train one network per depth config with ``recipe`` (plus ``overrides``); reuse finished runs.

    Args:
        recipe: YAML recipe (normally the one the analysed network was trained with).
        configs: depth configs to train alone.
        out_dir: runs are written to ``out_dir/<recipe name>_alone_<d1-d2-d3>``.
        overrides: extra ``key=value`` overrides (e.g. ``epochs=5 data.train_subset=5000``).

    Returns:
        The run directories (each with ``best.pt``/``last.pt``).
    """
    try:
        from ..train import train
    except ImportError as err:
        raise ValueError(f"--train-individual needs the training engine (stimulative.engine): {err}") from None
    base = load_config(recipe, list(overrides))
    run_dirs = []
    for config in configs:
        name = f"{base.name}_alone_{'-'.join(str(int(d)) for d in config)}"
        run_dir = Path(out_dir) / name
        if (run_dir / "best.pt").is_file() or (run_dir / "last.pt").is_file():
            print(f"individual run {run_dir} exists; reusing it")
            run_dirs.append(run_dir)
            continue
        cfg = load_config(recipe, [*overrides, *individual_model_overrides(base.model.name, config),
                                   f"name={name}", f"out_dir={Path(out_dir)}"])
        try:
            summary = train(cfg)
        except TypeError as err:
            raise ValueError(f"cannot build {base.model.name} with depths {format_depths(config)}: {err} "
                             "(the model builder must accept blocks_per_stage)") from None
        run_dirs.append(Path(summary.get("run_dir", run_dir)))
    return run_dirs
