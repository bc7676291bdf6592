"""Opening trained runs for analysis, evaluation and export: checkpoint, config, data, device.

Every command that reads a run takes checkpoints (``.pt`` files or run directories) followed by optional
``key=value`` overrides of the checkpoint's own config (e.g. ``data.root=/data/cifar10 data.test_subset=1000``),
so a run trained on another machine can be used where its data lives.

``open_run`` is the one way to open a trained run: an image run or a language-model run (``task: lm``:
``run.model`` is the ``transformers`` model, ``run.tokenizer`` its tokenizer, ``run.ed`` its elastic depth).
Inside the package (commands, analyses, exporters, benchmarks) ``_load`` is the one loader underneath it: the
loaded record of either kind without the config overrides.

Example:
    >>> run = open_run("runs/ct/best.pt", ["data.test_subset=1000"])          # doctest: +SKIP
    >>> data = run.data()                                                     # doctest: +SKIP
    >>> configs = select_configs(run.ed, sample=32, seed=0)                   # doctest: +SKIP
    >>> measure(run, [1, 1, 1], bn_images=2000)["acc"]                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .core.bn import recalibrated
from .core.elastic import ElasticDepth, format_depths, parse_depths
from .core.evaluation import evaluate, evaluate_depth
from .core.sampling import SampleSpace
from .data import DataBundle, build_data
from .lm.config import LMConfig, is_lm_run, lm_config_from_dict, lm_config_to_dict
from .lm.model import LoadedLM
from .train.checkpoint import LoadedModel
from .train.checkpoint import load_model as _load_image
from .train.config import Config, apply_overrides, config_from_dict, config_to_dict
from .train.runtime import resolve_device

__all__ = [
    "Run", "open_run", "open_runs", "unique_names", "split_overrides", "default_out_dir", "select_configs",
    "validate_configs", "measure_selected", "measure", "evaluate_checkpoint", "DEFAULT_MAX_ENUMERATE",
    "DEFAULT_SAMPLE",
]

DEFAULT_MAX_ENUMERATE = 64   # every sub-network when the space has at most this many
DEFAULT_SAMPLE = 32          # otherwise a seeded sample of this many (always with the full and smallest net)


@dataclass
class Run:
    """A trained (or exported) network opened from its checkpoint.

    Attributes:
        name: label used in tables and legends (the run's ``name``; made unique by ``open_runs``).
        path: the checkpoint file or run directory given by the user.
        loaded: the loaded checkpoint (model in eval mode): ``LoadedModel`` for an image run, ``LoadedLM`` for a
            language-model run.
        config: the checkpoint's config with the user's overrides applied.
    """

    name: str
    path: Path
    loaded: LoadedModel | LoadedLM
    config: Config | LMConfig

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def is_lm(self) -> bool:
        """A language-model run (``task: lm``): ``model`` is the ``transformers`` model, ``tokenizer`` is set."""
        return isinstance(self.loaded, LoadedLM)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of a language-model run (None for an image run)."""
        return self.loaded.tokenizer if self.is_lm else None

    @property
    def exit_adapter(self) -> torch.nn.Module | None:
        """The exit adapter of a language-model run trained with ``adapter.layer`` (None otherwise): pass it to
        ``stimulative.lm.generate(run.model, ids, exit_layer=run.exit_adapter.layer, exit_adapter=...)``."""
        return self.loaded.exit_adapter if self.is_lm else None

    @property
    def num_classes(self) -> int:
        return self.loaded.num_classes

    @property
    def exported(self) -> bool:
        """An exported sub-network (its depths are fixed, ``ed`` is not available)."""
        return not self.is_lm and self.loaded.ed is None

    @property
    def ed(self) -> ElasticDepth:
        """The model's ElasticDepth; a clear error for an exported sub-network."""
        if self.is_lm:
            if getattr(self, "_lm_ed", None) is None:
                from .hf import elastic_depth

                self._lm_ed = elastic_depth(self.loaded.model)
            return self._lm_ed
        if self.loaded.ed is None:
            raise ValueError(f"{self.path} is an exported sub-network (depths {self.loaded.depths}); "
                             "use the full training checkpoint instead")
        return self.loaded.ed

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's folder when a file was given)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def input_size(self) -> int:
        """The square input side the model is evaluated at (the center crop when the config sets one)."""
        return int(self.config.data.val_crop or self.config.data.input_size)

    def data(self, device: torch.device | str = "cpu", eval_batch_size: int = 0) -> DataBundle:
        """The run's train/test batches (cached per data config; several runs on one dataset load it once).

        A dataset with another number of classes than the checkpoint's is a clear error.
        """
        cfg = self.config
        batch = eval_batch_size or cfg.eval_batch_size
        key = repr((sorted(config_to_dict(cfg)["data"].items()), cfg.batch_size, batch, cfg.seed, str(device)))
        if key not in _DATA_CACHE:
            _DATA_CACHE[key] = build_data(cfg.data, batch_size=cfg.batch_size, eval_batch_size=batch, seed=cfg.seed,
                                          device=device)
        bundle = _DATA_CACHE[key]
        if bundle.num_classes != self.num_classes:
            raise ValueError(f"the checkpoint has {self.num_classes} classes but data {cfg.data.name!r} has "
                             f"{bundle.num_classes}; check the data.* overrides")
        return bundle


_DATA_CACHE: dict[str, DataBundle] = {}


def _load(path: str | Path, use_ema: bool = False, device: str | torch.device = "cpu") -> LoadedModel | LoadedLM:
    """The package's one loader of a trained run (what ``open_run`` opens, without overrides): the
    ``LoadedModel`` of an image checkpoint or the ``LoadedLM`` of a language-model run, model in eval mode.

    ``device``: where the model is put (a language-model run is built on it; an image run is moved there).
    """
    path = Path(path).expanduser()
    if is_lm_run(path):
        if use_ema:
            raise ValueError(f"{str(path)!r} is a language-model run: it has no EMA weights")
        from .lm.model import load_lm

        return load_lm(path, device)
    loaded = _load_image(path, use_ema=use_ema)
    if str(device) != "cpu":
        loaded.model.to(resolve_device(str(device)))
    return loaded


def open_run(path: str | Path, overrides: Sequence[str] = (), name: str | None = None,
             use_ema: bool = False) -> Run:
    """Load a checkpoint (or a run directory's ``best.pt``/``last.pt``) and apply config overrides.

    Args:
        path: checkpoint file or run directory (an image run, or a language-model run: ``run.model`` is then the
            ``transformers`` model in eval mode and ``run.tokenizer`` its tokenizer).
        overrides: ``key=value`` strings applied to the checkpoint's config (``stimulative.load_config`` syntax).
        name: label for tables and plots (default: the run's configured ``name``).
        use_ema: load the EMA weights (an error when the checkpoint has none).

    Raises:
        ValueError: missing/corrupt checkpoint (``CheckpointError``), a bad override, no EMA weights.
    """
    path = Path(path).expanduser()
    try:
        loaded = _load(path, use_ema=use_ema)
    except TypeError as err:  # e.g. a builder that does not accept a recorded kwarg
        raise ValueError(f"cannot rebuild the model of {str(path)!r}: {err}") from None
    if isinstance(loaded, LoadedLM):
        lm_config = loaded.config
        if overrides:
            lm_config = lm_config_from_dict(apply_overrides(lm_config_to_dict(lm_config), list(overrides)))
        return Run(name or lm_config.name, path, loaded, lm_config)
    if use_ema and not loaded.saved.has_ema:
        raise ValueError(f"checkpoint {str(path)!r} has no EMA weights (train with ema=0.999 to get them)")
    config = loaded.config
    if overrides:
        config = config_from_dict(apply_overrides(config_to_dict(config), list(overrides)))
    return Run(name or config.name, path, loaded, config)


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split CLI positionals into paths and ``key=value`` overrides (anything with ``=`` that is not a file)."""
    paths, overrides = [], []
    for item in items:
        if "=" in item and not Path(item).exists():
            overrides.append(item)
        else:
            paths.append(item)
    return paths, overrides


def unique_names(runs: Sequence[Any]) -> None:
    """Make run names unique in place (``name``, ``name (2)``, ...) so legends never merge two runs."""
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({count + 1})"


def open_runs(items: Sequence[str], what: str = "CHECKPOINT") -> list[Run]:
    """Open every checkpoint among CLI positionals, applying the ``key=value`` overrides among them to each.

    Names are made unique; an exported sub-network is a clear error (the analyses need the full network). A
    ``threads=N`` override (config key ``threads``) sets ``torch.set_num_threads(N)``.
    """
    paths, overrides = split_overrides(items)
    if not paths:
        raise ValueError(f"give at least one {what} (a .pt file or a run directory)")
    runs = [open_run(p, overrides) for p in paths]
    unique_names(runs)
    for run in runs:
        _ = run.ed  # raises for exported sub-networks
    if runs[0].config.threads > 0:
        torch.set_num_threads(runs[0].config.threads)
    return runs


def default_out_dir(runs: Sequence[Run], out: str | None, folder: str = "analysis") -> Path:
    """``out`` when given, else the run's ``<folder>/`` for one run, ``./<folder>`` for several."""
    if out:
        return Path(out).expanduser()
    if len(runs) == 1:
        return runs[0].run_dir / folder
    return Path(folder)


def validate_configs(ed: ElasticDepth, configs: Sequence[Sequence[int]], where: str = "the model") -> list[list[int]]:
    """Check ordered depth configs against the model; errors name the config and the valid range."""
    out = []
    for config in configs:
        config = [int(d) for d in config]
        try:
            ed.block_modes(config)
        except ValueError as err:
            raise ValueError(f"depths {format_depths(config)} are outside the sample space of {where}: {err}") \
                from None
        out.append(config)
    return out


def select_configs(ed: ElasticDepth, depths: Sequence[str | Sequence[int]] | None = None, all_configs: bool = False,
                   sample: int | None = None, seed: int = 0, where: str = "the model") -> list[list[int]]:
    """The ordered sub-networks to measure, largest first.

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
        configs = validate_configs(ed, [parse_depths(d) if isinstance(d, str) else list(d) for d in depths], where)
    else:
        space = SampleSpace.for_model(ed, "ordered")
        if all_configs or (sample is None and len(space) <= DEFAULT_MAX_ENUMERATE):
            configs = [list(c) for c in space]
        else:
            k = DEFAULT_SAMPLE if sample is None else int(sample)
            if k < 2:
                raise ValueError(f"--sample must be at least 2 (the full and the smallest net), got {k}")
            configs = space.distinct(k, seed)
    unique: list[list[int]] = []
    for c in configs:
        if c not in unique:
            unique.append(c)
    return sorted(unique, key=lambda c: (-sum(c), [-d for d in c]))


def measure_selected(runs: Sequence[Run], measure_configs: Callable[..., list[dict]], *,
                     depths: Sequence[str] | None = None, all_configs: bool = False, sample: int | None = None,
                     seed: int = 0, bn_images: int = 0, device: torch.device | str = "cpu", progress: bool = True,
                     extra: Callable[[Run], list[list[int]]] | None = None) -> list[dict]:
    """The rows of ``measure_configs(ed, configs, test, train, bn_images, run=, device=, progress=)`` for the
    sub-networks of every run chosen by ``select_configs`` (plus ``extra(run)``), on each run's own data."""
    torch.manual_seed(seed)
    rows: list[dict] = []
    for r in runs:
        configs = select_configs(r.ed, depths, all_configs, sample, seed, where=r.name)
        for c in extra(r) if extra else []:
            if c not in configs:
                configs.append(c)
        data = r.data(device)
        rows += measure_configs(r.ed, configs, data.test, data.train, bn_images, run=r.name, device=device,
                                progress=progress)
    return rows


def measure(run: Run, depths: Sequence[int] | None = None, bn_images: int = 0, device: torch.device | str = "cpu",
            eval_batch_size: int = 0) -> dict[str, Any]:
    """Accuracy and loss of one sub-network of ``run`` (``None``: the full network, or an exported network's own
    depths) on its test data, after re-estimating BN statistics on ``bn_images`` training images (0: as saved).

    Returns:
        ``{"depths", "full_network", "acc", "loss", "n"}``.
    """
    data = run.data(device, eval_batch_size)
    data.train.set_epoch(0)  # the same (seeded) images for the BN re-estimation on every call
    model = run.model.to(device)
    if run.exported:  # its depths are fixed
        if depths is not None and list(depths) != list(run.loaded.depths):
            raise ValueError(f"{str(run.path)!r} is an exported sub-network with depths {run.loaded.depths}; "
                             f"--depth {format_depths(depths)} is not available in it")
        with recalibrated(model, data.train, bn_images, device=device, restore=False):
            result = evaluate(model, data.test, device=device)
        depths, full = list(run.loaded.depths), False
    else:
        result = evaluate_depth(run.ed, depths, data.test, data.train, bn_images, device=device)
        depths = list(depths) if depths is not None else run.ed.full_depths
        full = depths == run.ed.full_depths
    return {"depths": depths, "full_network": full, "acc": result["acc"], "loss": result["loss"],
            "n": int(result["n"])}


def evaluate_checkpoint(checkpoint: str, depth: str | None = None, bn_recal: int = 0, ema: bool = False,
                        overrides: Sequence[str] | None = None, device: str = "auto", batch_size: int = 0) -> dict:
    """What ``stimulative eval`` computes, as a dict: checkpoint, depths, full_network, acc, loss, n, bn_recal, ema.

    Example:
        >>> evaluate_checkpoint("runs/demo/stpp", depth="1,1,1", bn_recal=500)   # doctest: +SKIP
        {'checkpoint': 'runs/demo/stpp', 'depths': [1, 1, 1], 'full_network': False, 'acc': 91.2, ...}
    """
    run = open_run(checkpoint, list(overrides or []), use_ema=ema)
    result = measure(run, parse_depths(depth) if depth else None, bn_recal, resolve_device(device), batch_size)
    return {"checkpoint": str(checkpoint), **result, "bn_recal": bn_recal, "ema": ema}
