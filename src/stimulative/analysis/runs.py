"""Loading what the analyses work on: checkpoints or run directories, their data, and depth configurations.

Every analysis command takes checkpoints (``.pt`` files or run directories) followed by optional ``key=value``
overrides of the checkpoint's own config (e.g. ``data.root=/data/cifar10 data.test_subset=1000``), so a run
trained on another machine can be analysed where its data lives.

Example:
    >>> run = load_run("runs/ct/best.pt", ["data.test_subset=1000"])        # doctest: +SKIP
    >>> bundle = run_data(run.config)                                       # doctest: +SKIP
    >>> configs = select_configs(run.ed, sample=32, seed=0)                 # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.elastic import ElasticDepth, parse_depths
from ..core.sampling import SampleSpace
from ..data import DataBundle, build_data
from ..train.checkpoint import LoadedModel, load_model
from ..train.config import Config, apply_overrides, config_from_dict, config_to_dict

__all__ = [
    "AnalysedRun", "load_run", "load_runs", "unique_names", "add_run_arguments", "add_depth_selection", "default_out_dir", "split_overrides", "run_data", "resolve_device", "select_configs",
    "validate_configs", "format_depths", "DEFAULT_MAX_ENUMERATE", "DEFAULT_SAMPLE",
]

DEFAULT_MAX_ENUMERATE = 64   # evaluate every sub-network when the space has at most this many
DEFAULT_SAMPLE = 32          # otherwise a seeded sample of this many (always with the full and smallest net)


@dataclass
class AnalysedRun:
    """A loaded checkpoint ready for analysis.

    Attributes:
        name: label used in tables and legends (the run's ``name``; made unique by ``load_runs``).
        path: the checkpoint file or run directory given by the user.
        loaded: what ``stimulative.checkpoint.load_model`` returned (model in eval mode).
        config: the checkpoint's config with the user's overrides applied.
    """

    name: str
    path: Path
    loaded: LoadedModel
    config: Config

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def ed(self) -> ElasticDepth:
        """The model's ElasticDepth; a clear error for a model without residual stages."""
        if self.loaded.ed is None:
            raise ValueError(f"{self.path} is an exported sub-network (depths {self.loaded.depths}); "
                             "analyse the full trained network instead")
        return self.loaded.ed

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's folder when a file was given)."""
        return self.path if self.path.is_dir() else self.path.parent


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split CLI positionals into paths and ``key=value`` overrides (anything with ``=`` that is not a file)."""
    paths, overrides = [], []
    for item in items:
        if "=" in item and not Path(item).exists():
            overrides.append(item)
        else:
            paths.append(item)
    return paths, overrides


def load_run(path: str | Path, overrides: Sequence[str] = (), name: str | None = None) -> AnalysedRun:
    """Load a checkpoint (or a run directory's ``best.pt``/``last.pt``) and apply config overrides.

    Args:
        path: checkpoint file or run directory.
        overrides: ``key=value`` strings applied to the checkpoint's config (``stimulative.config`` syntax).
        name: label for tables and plots (default: the run's configured ``name``).

    Raises:
        ValueError: missing/corrupt checkpoint (``CheckpointError``), a bad override, or a model without
            residual stages.
    """
    path = Path(path).expanduser()
    try:
        loaded = load_model(path)
    except TypeError as err:  # e.g. a builder that does not accept a recorded kwarg
        raise ValueError(f"cannot rebuild the model of {str(path)!r}: {err}") from None
    data = config_to_dict(loaded.config)
    apply_overrides(data, list(overrides))
    config = config_from_dict(data)
    return AnalysedRun(name or config.name, path, loaded, config)


def unique_names(runs: Sequence[Any]) -> None:
    """Make run names unique in place (``name``, ``name (2)``, ...) so legends never merge two runs."""
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({count + 1})"


_DATA_CACHE: dict[str, DataBundle] = {}


def run_data(config: Config, device: torch.device | str = "cpu", num_classes: int | None = None) -> DataBundle:
    """The run's train/test batches (cached per data config, so several runs on one dataset load it once).

    With ``num_classes`` (the checkpoint's), a dataset with another number of classes is a clear error.
    """
    key = repr((sorted(config_to_dict(config)["data"].items()), config.batch_size, config.eval_batch_size,
                config.seed, str(device)))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = build_data(config.data, batch_size=config.batch_size,
                                      eval_batch_size=config.eval_batch_size, seed=config.seed, device=device)
    bundle = _DATA_CACHE[key]
    if num_classes is not None and bundle.num_classes != num_classes:
        raise ValueError(f"the checkpoint has {num_classes} classes but data {config.data.name!r} has "
                         f"{bundle.num_classes}; check the data.* overrides")
    return bundle


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def format_depths(config: Sequence[int]) -> str:
    """``[3, 3, 3]`` -> ``"3,3,3"`` (the CLI form)."""
    return ",".join(str(int(d)) for d in config)


def validate_configs(ed: ElasticDepth, configs: Sequence[Sequence[int]], where: str = "the model") -> list[list[int]]:
    """Check ordered depth configs against the model; errors name the config and the valid range."""
    out = []
    for config in configs:
        config = [int(d) for d in config]
        try:
            ed.block_modes(config)
        except ValueError as err:
            raise ValueError(f"depths {format_depths(config)} are outside the sample space of {where}: {err}") from None
        out.append(config)
    return out


def select_configs(ed: ElasticDepth, depths: Sequence[str | Sequence[int]] | None = None, all_configs: bool = False,
                   sample: int | None = None, seed: int = 0, where: str = "the model") -> list[list[int]]:
    """The ordered sub-networks to analyse, largest first.

    Args:
        ed: the model's ElasticDepth.
        depths: explicit configs (``"3,3,3"`` strings or int lists); validated against the model.
        all_configs: every config of the ordered space.
        sample: a seeded random sample of this many configs (always including the full and the smallest net).
        seed: seed of the sample.
        where: how to name the model in errors.

    With none of ``depths``/``all_configs``/``sample``: all configs when the space has at most
    ``DEFAULT_MAX_ENUMERATE`` of them, else a sample of ``DEFAULT_SAMPLE``.
    """
    if depths:
        for d in depths:
            if isinstance(d, str) and "=" in d:
                raise ValueError(f"{d!r} is not a depth config; put key=value overrides right after the "
                                 "checkpoints, before --depths")
        configs = [parse_depths(d) if isinstance(d, str) else list(d) for d in depths]
        configs = validate_configs(ed, configs, where)
    else:
        space = SampleSpace.for_model(ed, "ordered")
        if all_configs or (sample is None and len(space) <= DEFAULT_MAX_ENUMERATE):
            configs = [list(c) for c in space]
        else:
            k = DEFAULT_SAMPLE if sample is None else int(sample)
            if k < 2:
                raise ValueError(f"--sample must be at least 2 (the full and the smallest net), got {k}")
            configs = _sample_configs(space, ed, k, seed)
    unique: list[list[int]] = []
    for c in configs:
        if c not in unique:
            unique.append(c)
    return sorted(unique, key=lambda c: (-sum(c), [-d for d in c]))


def _sample_configs(space: SampleSpace, ed: ElasticDepth, k: int, seed: int) -> list[list[int]]:
    full, smallest = list(ed.full_depths), list(ed.min_depths)
    if len(space) <= k:
        return [list(c) for c in space]
    rng = random.Random(seed)
    ranges = [range(m, c + 1) for m, c in zip(smallest, full)]
    chosen = [full, smallest]
    while len(chosen) < k:
        c = [rng.choice(r) for r in ranges]
        if c not in chosen:
            chosen.append(c)
    return chosen


def load_runs(items: Sequence[str], what: str = "CHECKPOINT") -> list[AnalysedRun]:
    """Load every checkpoint among CLI positionals, applying the ``key=value`` overrides among them to each.

    Names are made unique; a model without residual stages or an exported sub-network is a clear error. A
    ``threads=N`` override (config key ``threads``) sets ``torch.set_num_threads(N)``.
    """
    paths, overrides = split_overrides(items)
    if not paths:
        raise ValueError(f"give at least one {what} (a .pt file or a run directory)")
    runs = [load_run(p, overrides) for p in paths]
    unique_names(runs)
    for run in runs:
        _ = run.ed  # raises for exported sub-networks
    if runs[0].config.threads > 0:
        torch.set_num_threads(runs[0].config.threads)
    return runs


def add_depth_selection(parser: argparse.ArgumentParser, sample_help: str) -> None:
    """``--all | --depths D.. | --sample K`` and ``--bn-recal N`` (default 2000) for per-sub-network analyses."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every sub-network of the ordered space")
    which.add_argument("--depths", nargs="+", metavar="D1,D2,..", help="these depth configs, e.g. 3,3,3 1,1,1")
    which.add_argument("--sample", type=int, metavar="K", help=sample_help)
    parser.add_argument("--bn-recal", type=int, default=2000, metavar="N",
                        help="re-estimate BN statistics per sub-network on N training images (0: skip)")


def add_run_arguments(parser: argparse.ArgumentParser, many: bool = True) -> None:
    """The arguments every analysis command shares: checkpoints + overrides, --out, --seed, --device."""
    parser.add_argument("inputs", nargs="+", metavar="CHECKPOINT" + (" [CHECKPOINT ...]" if many else ""),
                        help="checkpoint files or run directories (best.pt, else last.pt), followed by optional "
                             "key=value overrides of their config, e.g. data.root=/data data.test_subset=1000")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis for one "
                        "checkpoint, ./analysis for several)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling sub-networks and images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_out_dir(runs: Sequence[AnalysedRun], out: str | None) -> Path:
    """``--out`` when given, else the run's ``analysis/`` folder for one run, ``./analysis`` for several."""
    if out:
        return Path(out).expanduser()
    if len(runs) == 1:
        return runs[0].run_dir / "analysis"
    return Path("analysis")
