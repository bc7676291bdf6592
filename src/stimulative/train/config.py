"""Run configuration: typed dataclasses, YAML recipes and ``key=value`` overrides (nanoGPT-style).

``load_config("recipes/cifar10_resnet20_stpp.yaml", ["optim.lr=0.05", "epochs=3"])`` reads the recipe, applies
the overrides (values parsed as YAML: ``3``, ``0.05``, ``true``, ``[3,3,3]``, ``null``), and checks every key
and type: an unknown key or a wrong type is an error that names the key and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.droppath import DROP_PATH_MODES, DROP_PATH_SCHEDULES
from ..core.losses import KL_NORMS, KL_SCHEDULES, SUBNET_LOSSES
from ..core.sampling import SAMPLING_KINDS
from ..core.step import RENAMED_OPTIONS
from ..data.config import DataConfig  # the data layer's; re-exported here
from ..io import atomic_write_text

__all__ = [
    "Config", "ModelConfig", "DataConfig", "OptimConfig", "STConfig", "ConfigError",
    "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "save_config", "read_recipe",
    "fill_dataclass", "RunPaths", "CHOICES", "RENAMED_KEYS", "upgrade_renamed_keys",
]


class ConfigError(ValueError):
    """A bad recipe or override: unknown key, wrong type or invalid value."""


@dataclass
class ModelConfig:
    name: str = "cifar_resnet20"          # see stimulative.create_model
    num_classes: int | None = None        # None: taken from the dataset
    pretrained: bool = False
    kwargs: dict = field(default_factory=dict)   # extra builder arguments (e.g. {shortcut: B})
    stages: list | None = None            # manual ElasticDepth stage spec; None = auto-discovery
    drop_path: float = 0.0                # per-sample drop rate of the residual blocks (0 = off); peers of ST
    drop_path_schedule: str = "linear"    # linear (stochastic depth, p at the last block) | uniform (LayerDrop)
    drop_path_mode: str = "sample"        # sample (a draw per sample, computes every block) | batch (one draw per
    #                                       block per step; a dropped block is skipped: the compute-saving form)
    drop_path_removable_only: bool = False  # the schedule covers only blocks some sub-network removes


@dataclass
class OptimConfig:
    name: str = "sgd"                     # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = True         # no weight decay on BN/bias/1-d params
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"              # cosine | onecycle | constant (per iteration)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    clip_grad: float = 0.0                # max grad norm; 0 = off
    label_smoothing: float = 0.0


@dataclass
class STConfig:
    """The ``st`` section: every field but ``sampling``/``ranges``/``depths`` is the ``StimulativeStep`` option of the
    same name (``StimulativeStep.from_config(cfg.st, ed)``); ``sampling``/``ranges``/``depths`` choose its
    ``SampleSpace``."""

    num_subnets: int = 0                  # 0 = common training (CT); 1 = ST; 6 = ST++ "Snet6"
    sampling: str = "ordered"             # ordered | inter_stage | stochastic | raw
    ranges: list | None = None            # InterSSR ranges (inter_stage)
    depths: list | None = None            # the configurations of sampling=choices (one-stage models: ints,
    #                                       e.g. an LM's draft exits [8])
    kl_norm: str = "plain"                # plain | layer | layer_sg | l2: KL- normalisation of the logits
    #                                       before the sub-network loss (was `kl`, read until the next release)
    amplitude: Any = 1.0                  # float or "adaptive"
    temperature: float = 1.0
    kl_weight: float = 1.0
    kl_schedule: str = "constant"         # constant | cosine_up | cosine_down
    start_epoch: int = 0                  # first epoch that trains sub-networks
    loss: str = "kl"                      # kl | soft_ce | ce | mse | dkd: the sub-network loss (divergence)
    normalize_main: bool = False          # KL- normalise the main logits before CE too (reference code)
    min_input_scale: float = 1.0          # random smaller sub-network inputs (0.43 on ImageNet); 1 = off
    subnet_fraction: float = 1.0          # sub-networks see the first ceil(f * batch) samples (cost lever)
    subnet_every: int = 1                 # sub-networks on every k-th step only (cost lever)
    project_conflicts: bool = False       # drop the sub-network gradient's component against the main one
    freeze_subnet_bn: bool = True         # sub-network passes don't update BN running stats
    prefix_exits: bool = True             # single-stage models (LMs, ViTs) at full input size: read the
    #                                       sub-networks off the main forward (same losses and gradients)

    @property
    def kl(self) -> str:
        """Deprecated: the old name of ``kl_norm`` (read until the next release)."""
        warnings.warn("STConfig.kl is now STConfig.kl_norm; 'kl' is read until the next release",
                      DeprecationWarning, stacklevel=2)
        return self.kl_norm


class RunPaths:
    """``run_dir`` = ``out_dir/name`` for every run config (image and language-model runs)."""

    out_dir: str
    name: str

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir).expanduser() / self.name


@dataclass
class Config(RunPaths):
    """A run's whole configuration: a recipe's keys (``load_config``), sections ``model``, ``data``, ``optim``, ``st``."""

    name: str = "run"
    out_dir: str = "runs"                 # the run writes to out_dir/name
    epochs: int = 10
    batch_size: int = 128                 # global batch (split across DDP processes)
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:1 ...
    amp: str = "none"                     # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    threads: int = 0                      # torch.set_num_threads; 0 = leave as is
    ema: float = 0.0                      # EMA decay of the weights (e.g. 0.999); 0 = off
    eval_every: int = 1                   # evaluate every K epochs (and always at the end)
    eval_depths: list = field(default_factory=list)   # sub-networks evaluated during training, e.g. [[1,1,1]]
    bn_recal_images: int = 0              # re-estimate BN stats on N train images before each eval; 0 = off
    resume: str | None = None             # null | auto | path/to/last.pt
    overwrite: bool = False               # a fresh run may replace the checkpoints and logs already in the run dir
    log_every: int = 50                   # steps between progress-bar postfix updates
    stats_every: int = 0                  # every K steps append gradient norms / logit stds to steps.jsonl; 0 = off
    tensorboard: bool = False
    deterministic: bool = False
    max_steps: int = 0                    # stop after N optimizer steps (smoke tests); 0 = no limit
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    st: STConfig = field(default_factory=STConfig)



def check_depths(st: STConfig) -> None:
    """``st.depths`` goes with ``st.sampling=choices`` and back (the depths themselves are checked against the
    model when its space is built)."""
    if st.sampling == "choices" and not st.depths:
        raise ConfigError("st.sampling=choices needs st.depths, e.g. st.depths=[8] (an LM's exit) or "
                          "st.depths=[[1,1,1],[2,2,2]]")
    if st.depths and st.sampling != "choices":
        raise ConfigError(f"st.depths is for st.sampling=choices (got st.sampling={st.sampling})")


# The st.* choices are the method's own lists, so a new KL- variant or loss is a valid recipe value at once.
CHOICES = {
    "data.name": ("cifar10", "cifar100", "folder", "synthetic", "digits"),
    "data.augment": ("cifar", "imagenet", "none"),
    "model.drop_path_schedule": DROP_PATH_SCHEDULES,
    "model.drop_path_mode": DROP_PATH_MODES,
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "onecycle", "constant"),
    "st.sampling": SAMPLING_KINDS,
    "st.kl_norm": KL_NORMS,
    "st.kl_schedule": KL_SCHEDULES,
    "st.loss": SUBNET_LOSSES,
    "amp": ("none", "bf16", "fp16"),
}


# Keys renamed in this release (old dotted key -> new): recipes and overrides with the old key are read, with a
# DeprecationWarning, until the next release; saved configs (checkpoints, config.yaml) are read without one.
RENAMED_KEYS = {f"st.{old}": f"st.{new}" for old, new in RENAMED_OPTIONS.items()}


def _rename_keys(data: dict, prefix: str, warn: bool) -> dict:
    """``data`` (the mapping at dotted ``prefix``) with the old names of renamed keys replaced by the new ones."""
    for old_full, new_full in RENAMED_KEYS.items():
        old_parent, _, old = old_full.rpartition(".")
        new_parent, _, new = new_full.rpartition(".")
        if old_parent + "." != prefix or new_parent != old_parent or old not in data:
            continue
        if warn:
            warnings.warn(f"config key {old_full!r} is now {new_full!r}; {old_full!r} is read until the next "
                          "release", DeprecationWarning, stacklevel=4)
        data = dict(data)
        value = data.pop(old)
        if new in data and data[new] != value:
            raise ConfigError(f"config keys {old_full!r} (the old name of {new_full!r}) and {new_full!r} are both "
                              f"set, to {value!r} and {data[new]!r}: keep {new_full!r}")
        data[new] = value
    return data


def upgrade_renamed_keys(config: dict) -> dict:
    """A saved config (a checkpoint's, a run's ``config.yaml``) of an older release with its renamed keys under
    their new names (``RENAMED_KEYS``), without a warning: the run was right when it was written."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for section in {key.split(".")[0] for key in RENAMED_KEYS}:
        if isinstance(out.get(section), dict):
            out[section] = _rename_keys(out[section], section + ".", warn=False)
    return out


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _members(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        annotation = origin
    return isinstance(value, annotation)


def fill_dataclass(cls: type, data: dict, prefix: str = "", choices: dict[str, tuple] | None = None) -> Any:
    """Build the (nested) dataclass ``cls`` from a dict, checking every key, type and choice.

    An unknown key, a wrong type or a value outside ``choices`` (dotted key -> allowed values; default: this
    config's) is a ``ConfigError`` naming the key. Ints in float fields become floats; YAML's ``1e-4`` strings
    in float fields become numbers. Other configs with the same rules (``stimulative.lm``) can use it too.
    """
    choices = CHOICES if choices is None else choices
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    data = _rename_keys(data, prefix, warn=True)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = prefix + key
        if key not in fields:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(sorted(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = fill_dataclass(hint, value or {}, full + ".", choices)
            continue
        if isinstance(value, int) and not isinstance(value, bool) and float in _members(hint) \
                and int not in _members(hint):
            value = float(value)  # `lr: 1` in a float field is stored as 1.0
        if isinstance(value, str) and _type_ok(1.0, hint) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, dict) and not _type_ok(value, hint):
            raise ConfigError(f"config key {full!r} is a value, not a section: cannot set "
                              f"{', '.join(full + '.' + str(k) for k in value)}")
        if not _type_ok(value, hint):
            raise ConfigError(f"config key {full!r} expects {_type_name(hint)}, got {value!r} "
                              f"({type(value).__name__})")
        if full in choices and value not in choices[full]:
            raise ConfigError(f"config key {full!r} must be one of {', '.join(choices[full])}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def config_from_dict(data: dict) -> Config:
    """Build and validate a ``Config`` from a nested dict."""
    cfg = fill_dataclass(Config, data or {})
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _validate(cfg: Config) -> None:
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.st.num_subnets < 0:
        raise ConfigError(f"st.num_subnets must be >= 0, got {cfg.st.num_subnets}")
    if not 0 < cfg.st.min_input_scale <= 1:
        raise ConfigError(f"st.min_input_scale must be in (0, 1], got {cfg.st.min_input_scale}")
    amp = cfg.st.amplitude
    if not (amp == "adaptive" or (isinstance(amp, (int, float)) and not isinstance(amp, bool) and amp > 0)):
        raise ConfigError(f"st.amplitude must be a positive number or 'adaptive', got {amp!r}")
    if cfg.st.sampling == "inter_stage" and not cfg.st.ranges:
        raise ConfigError("st.sampling=inter_stage needs st.ranges, e.g. st.ranges=[1,2,4,1]")
    check_depths(cfg.st)
    for key, value, low in (("eval_every", cfg.eval_every, 1), ("log_every", cfg.log_every, 1),
                            ("eval_batch_size", cfg.eval_batch_size, 1), ("threads", cfg.threads, 0),
                            ("bn_recal_images", cfg.bn_recal_images, 0), ("max_steps", cfg.max_steps, 0),
                            ("stats_every", cfg.stats_every, 0), ("st.start_epoch", cfg.st.start_epoch, 0),
                            ("data.input_size", cfg.data.input_size, 1), ("data.train_subset", cfg.data.train_subset, 0),
                            ("data.test_subset", cfg.data.test_subset, 0), ("data.padding", cfg.data.padding, 0),
                            ("data.val_resize", cfg.data.val_resize, 0), ("data.val_crop", cfg.data.val_crop, 0),
                            ("data.workers", cfg.data.workers, 0)):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if not 0 <= cfg.ema < 1:
        raise ConfigError(f"ema must be in [0, 1) (an EMA decay such as 0.999; 0 = off), got {cfg.ema}")
    if not 0 <= cfg.model.drop_path < 1:
        raise ConfigError(f"model.drop_path must be in [0, 1) (e.g. 0.5 for stochastic depth, 0.2 for LayerDrop), "
                          f"got {cfg.model.drop_path}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.optim.warmup_epochs < 0 or cfg.optim.min_lr < 0 or cfg.optim.clip_grad < 0 or cfg.optim.weight_decay < 0:
        raise ConfigError("optim.warmup_epochs, optim.min_lr, optim.clip_grad and optim.weight_decay must be >= 0")
    if not 0 <= cfg.optim.label_smoothing < 1:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers like [0.9, 0.999], got {cfg.optim.betas}")
    if cfg.st.temperature <= 0:
        raise ConfigError(f"st.temperature must be > 0, got {cfg.st.temperature}")
    for d in cfg.eval_depths:
        if not isinstance(d, list) or not d or not all(
                isinstance(v, (int, list)) and not isinstance(v, bool) for v in d):
            raise ConfigError(f"eval_depths must be a list of depth lists like [[1,1,1],[2,2,2]], got entry {d!r}")
    if cfg.resume not in (None, "auto") and not Path(cfg.resume).expanduser().exists():
        raise ConfigError(f"resume checkpoint {cfg.resume!r} does not exist (use resume=auto or a path to last.pt)")
    if cfg.overwrite and cfg.resume is not None:
        raise ConfigError(f"overwrite=true starts the run afresh, resume={cfg.resume!r} continues it: give one of them")


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides (dotted keys, YAML values) to a nested dict, in place."""
    for item in overrides:
        item = item.removeprefix("--")
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse the value of override {key}={raw!r}: {err}") from None
        if key in RENAMED_KEYS:
            warnings.warn(f"override {key!r} is now {RENAMED_KEYS[key]!r}; {key!r} is read until the next release",
                          DeprecationWarning, stacklevel=2)
            key = RENAMED_KEYS[key]
        _set_path(data, key, value)
        for old, new in RENAMED_KEYS.items():  # the override replaces the recipe's value under either name
            parent, _, name = old.rpartition(".")
            node = _get_path(data, parent)
            if new == key and isinstance(node, dict):
                node.pop(name, None)
    return data


def _get_path(data: dict, dotted: str) -> Any:
    node: Any = data
    for k in dotted.split(".") if dotted else []:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def read_recipe(path: str | Path) -> dict:
    """The mapping in a YAML recipe file, with a one-line ``ConfigError`` naming the file when it is missing,
    not text, not YAML, empty (a recipe that sets nothing is a mistake: omit it to train on the defaults) or not a
    mapping."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {str(path)!r} is not a text (UTF-8 YAML) file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigError(f"recipe {str(path)!r} is empty (no keys set); omit the recipe to train on the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply overrides."""
    data = read_recipe(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
