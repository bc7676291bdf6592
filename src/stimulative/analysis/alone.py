"""Training the "alone" baselines of the loafing analysis: the same sub-network architectures trained by themselves.

A sub-network ``(d_1, d_2, d_3)`` of a CIFAR ResNet is the CIFAR ResNet built with ``d_i`` blocks per stage, so
its baseline trained alone is the same recipe with the model's depth changed (``stimulative.models.with_depths``:
``cifar_resnet20`` for ``3,3,3``, otherwise ``blocks_per_stage=[d_1, d_2, d_3]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ..core.elastic import format_depths
from ..models import with_depths
from ..train import load_config, train

__all__ = ["train_alone"]


def train_alone(recipe: str | Path, configs: Sequence[Sequence[int]], out_dir: str | Path,
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
    base = load_config(recipe, list(overrides))
    run_dirs = []
    for config in configs:
        name = f"{base.name}_alone_{format_depths(config, sep='-')}"
        run_dir = Path(out_dir) / name
        if (run_dir / "best.pt").is_file() or (run_dir / "last.pt").is_file():
            print(f"run trained alone {run_dir} exists; reusing it")
            run_dirs.append(run_dir)
            continue
        model_name, kwargs = with_depths(base.model.name, config, base.model.kwargs)
        cfg = dataclasses.replace(base, name=name, out_dir=str(Path(out_dir)),
                                  model=dataclasses.replace(base.model, name=model_name, kwargs=kwargs))
        try:
            summary = train(cfg)
        except TypeError as err:
            raise ValueError(f"cannot build {base.model.name} with depths {format_depths(config)}: {err} "
                             "(the model builder must accept blocks_per_stage)") from None
        run_dirs.append(Path(summary.get("run_dir", run_dir)))
    return run_dirs
