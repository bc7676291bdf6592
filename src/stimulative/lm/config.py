"""The configuration of a language-model run: typed dataclasses, YAML recipes and ``key=value`` overrides.

A recipe with ``task: lm`` is an LM run (``is_lm_recipe``)::

    cfg = load_lm_config("recipes/lm_llama_st.yaml", ["steps=200", "model.hidden_size=128"])

Overrides are parsed as YAML (``stimulative.train.config.apply_overrides``); an unknown key or a wrong type is a
``ConfigError`` naming the key and the valid ones. The ``st`` section is the project's ``STConfig``: the same
``StimulativeStep`` options (``StimulativeStep.from_config``). For LMs keep ``st.min_input_scale=1`` and
``st.subnet_fraction=1`` (the step's random resize is for images; the teacher has one row per token), and the
ST schedule (``kl_schedule``, ``start_epoch``) runs in fractional epochs of the training tokens.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io import atomic_write_text
from ..train.config import CHOICES as TRAIN_CHOICES
from ..train.config import (
    ConfigError,
    RunPaths,
    STConfig,
    apply_overrides,
    check_depths,
    fill_dataclass,
    read_recipe,
)

__all__ = ["LMConfig", "LMModelConfig", "LayerSkipConfig", "ExitAdapterConfig", "LMDataConfig", "LMOptimConfig", "load_lm_config", "lm_config_from_dict",
           "lm_config_to_dict", "save_lm_config", "is_lm_recipe", "is_lm_run", "default_eval_depths", "ConfigError"]

FAMILIES = ("llama", "gpt2")


@dataclass
class LMModelConfig:
    family: str = "llama"                 # llama (LlamaForCausalLM) | gpt2 (GPT2LMHeadModel)
    num_hidden_layers: int = 8
    hidden_size: int = 256
    intermediate_size: int = 0            # MLP width; 0 = llama: 8/3 * hidden (multiple of 8), gpt2: 4 * hidden
    num_attention_heads: int = 4
    num_key_value_heads: int = 0          # llama GQA; 0 = num_attention_heads
    context: int = 256                    # training block length = max positions
    tie_word_embeddings: bool = False
    pretrained: str | None = None         # a save_pretrained directory (LlamaForCausalLM, GPT2LMHeadModel) to
    #                                       continue pre-training, or a .gguf file (converted once into
    #                                       ~/.cache/stimulative/gguf: stimulative.lm.gguf.cached_gguf):
    #                                       family and sizes come from its config.json
    #                                       (a differing explicit size is an error), its tokenizer files replace
    #                                       data.tokenizer=byte, model.context + 1 <= its max positions


@dataclass
class LMDataConfig:
    root: str | None = None               # text file | folder (split by file) | folder with train/ and val/;
    #                                       None or "stdlib" = the Python standard library's sources
    val_fraction: float = 0.1
    tokenizer: str = "byte"               # byte | a local transformers tokenizer directory
    max_bytes: int = 0                    # read at most this many bytes per split (quick runs); 0 = all
    val_blocks: int = 256                 # validation blocks evaluated (evenly spaced over val); 0 = all


@dataclass
class LMOptimConfig:
    name: str = "adamw"                   # adamw | sgd
    lr: float = 2e-3
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.9                 # sgd
    weight_decay: float = 0.1             # not on 1-d parameters (norms, biases)
    schedule: str = "cosine"              # cosine | onecycle | constant (per iteration)
    warmup_steps: int = 100
    min_lr: float = 0.0
    clip_grad: float = 1.0                # max grad norm; 0 = off


@dataclass
class LayerSkipConfig:
    """LayerSkip (Elhoushi et al. 2024) instead of ST: layer dropout + early-exit loss (``stimulative.lm.layerskip``)."""

    enabled: bool = False
    p_max: float = 0.1                    # largest layer-dropout rate (last layer, end of training)
    e_scale: float = 0.1                  # loss scale of the early exits (the last layer's is 1)
    rotation: int = 0                     # R: early-exit loss on every R-th layer, rotating; 0 = every layer
    time_schedule: str = "exp"            # exp (from scratch) | constant (continued pre-training)


@dataclass
class ExitAdapterConfig:
    """An exit adapter on the frozen model instead of ST (``stimulative.lm.adapter``, Kangaroo's idea): only a small
    map on layer ``layer``'s hidden state trains, with ST's token KL to the full model; the model's weights stay
    exactly as ``model.pretrained`` has them, so its quality cannot move and decoding through the adapter is exact."""

    layer: int = 0                        # the exit the adapter reads (1 <= layer < L); 0 = no adapter
    rank: int = 1024                      # its bottleneck width


@dataclass
class LMConfig(RunPaths):
    task: str = "lm"
    name: str = "lm"
    out_dir: str = "runs"                 # the run writes to out_dir/name
    steps: int = 1000                     # optimizer steps (used when epochs == 0)
    epochs: float = 0.0                   # > 0: steps = ceil(epochs * training tokens / (batch_size * context))
    batch_size: int = 16                  # blocks of model.context tokens per step
    eval_batch_size: int = 32
    eval_every: int = 200                 # steps between validations (and always at the end)
    save_every: int = 0                   # also checkpoint every this many steps between validations (0 = off):
    #                                       a run stopped without warning loses at most that many steps
    eval_depths: list | None = None       # prefix depths validated besides the full model (>= L skipped);
    #                                       None = L/4, L/2, 3L/4
    log_every: int = 50                   # steps between console lines
    seed: int = 0
    threads: int = 0                      # torch.set_num_threads; 0 = leave as is
    device: str = "auto"                  # auto | cpu | cuda | cuda:1 ...
    resume: str | None = None             # null | auto | path/to/last.pt or run dir
    overwrite: bool = False               # a fresh run may replace the checkpoint and logs already in the run dir
    max_steps: int = 0                    # stop at this global step (checkpoint written; resume later); 0 = off
    model: LMModelConfig = field(default_factory=LMModelConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    optim: LMOptimConfig = field(default_factory=LMOptimConfig)
    st: STConfig = field(default_factory=STConfig)
    layerskip: LayerSkipConfig = field(default_factory=LayerSkipConfig)
    adapter: ExitAdapterConfig = field(default_factory=ExitAdapterConfig)



# the image config's choices (st.*, optim.*) plus the LM's own
_CHOICES = {**TRAIN_CHOICES, "task": ("lm",), "model.family": FAMILIES,
            "layerskip.time_schedule": ("exp", "constant")}


def _validate(cfg: LMConfig) -> None:
    m = cfg.model
    for key, value, low in (("steps", cfg.steps, 1), ("batch_size", cfg.batch_size, 1),
                            ("eval_batch_size", cfg.eval_batch_size, 1), ("eval_every", cfg.eval_every, 1),
                            ("save_every", cfg.save_every, 0), ("log_every", cfg.log_every, 1), ("threads", cfg.threads, 0),
                            ("max_steps", cfg.max_steps, 0), ("model.num_hidden_layers", m.num_hidden_layers, 1),
                            ("model.hidden_size", m.hidden_size, 1), ("model.num_attention_heads",
                                                                      m.num_attention_heads, 1),
                            ("model.context", m.context, 2), ("data.max_bytes", cfg.data.max_bytes, 0),
                            ("data.val_blocks", cfg.data.val_blocks, 0), ("optim.warmup_steps",
                                                                          cfg.optim.warmup_steps, 0)):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
                          f"{m.num_attention_heads}")
    if m.num_key_value_heads and m.num_attention_heads % m.num_key_value_heads:
        raise ConfigError("model.num_attention_heads must be a multiple of model.num_key_value_heads")
    if cfg.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {cfg.epochs}")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.optim.lr <= 0 or cfg.optim.min_lr < 0 or cfg.optim.weight_decay < 0 or cfg.optim.clip_grad < 0:
        raise ConfigError("optim.lr must be > 0; optim.min_lr, weight_decay and clip_grad >= 0")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers, got {cfg.optim.betas}")
    if cfg.st.num_subnets < 0:
        raise ConfigError(f"st.num_subnets must be >= 0, got {cfg.st.num_subnets}")
    check_depths(cfg.st)
    if cfg.st.min_input_scale != 1 or cfg.st.subnet_fraction != 1:
        raise ConfigError("LM runs need st.min_input_scale=1 and st.subnet_fraction=1 (random smaller inputs and "
                          "sample subsets are for images; the teacher has one logit row per token)")
    if cfg.layerskip.enabled:
        if cfg.st.num_subnets:
            raise ConfigError("layerskip.enabled and st.num_subnets > 0 are two methods; choose one "
                              "(st.num_subnets=0 for LayerSkip)")
        if not 0 <= cfg.layerskip.p_max < 1 or cfg.layerskip.e_scale < 0 or cfg.layerskip.rotation < 0:
            raise ConfigError("layerskip.p_max must be in [0, 1); layerskip.e_scale and layerskip.rotation >= 0")
    if cfg.adapter.layer:
        _validate_adapter(cfg)
    if cfg.eval_depths is not None:
        bad = [d for d in cfg.eval_depths if not isinstance(d, int) or isinstance(d, bool) or d < 1]
        if bad:
            raise ConfigError(f"eval_depths must be positive layer counts (those >= num_hidden_layers are "
                              f"skipped), got {bad}")
    if m.pretrained is not None and (not isinstance(m.pretrained, str) or not m.pretrained.strip()):
        raise ConfigError(f"model.pretrained must be a save_pretrained directory, a .gguf file or null, got "
                          f"{m.pretrained!r}")
    if cfg.resume not in (None, "auto") and not Path(cfg.resume).expanduser().exists():
        raise ConfigError(f"resume checkpoint {cfg.resume!r} does not exist (use resume=auto or a path)")
    if cfg.overwrite and cfg.resume is not None:
        raise ConfigError(f"overwrite=true starts the run afresh, resume={cfg.resume!r} continues it: give one of them")


def _validate_adapter(cfg: LMConfig) -> None:
    """An exit-adapter run trains the adapter alone on a frozen pretrained model: the keys that would train the
    model, or validate exits the run does not train, are refused (naming them) rather than ignored."""
    a = cfg.adapter
    if a.layer < 0 or a.rank < 1:
        raise ConfigError(f"adapter.layer must be >= 0 (0: no adapter) and adapter.rank >= 1, got {a.layer}, {a.rank}")
    if not cfg.model.pretrained:
        raise ConfigError("adapter.layer needs model.pretrained: the adapter learns to read a trained model's layer "
                          "(a randomly initialised model has nothing to draft)")
    if cfg.st.num_subnets or cfg.layerskip.enabled:
        raise ConfigError("adapter.layer trains the exit adapter on the frozen model; st.num_subnets > 0 and "
                          "layerskip.enabled train the model itself: set st.num_subnets=0 and layerskip.enabled=false")
    if cfg.eval_depths is not None and list(cfg.eval_depths) not in ([], [a.layer]):
        raise ConfigError(f"eval_depths={cfg.eval_depths}: an adapter run validates its own exit "
                          f"(adapter.layer={a.layer}) and the full model; leave eval_depths unset")


def lm_config_from_dict(data: dict | None) -> LMConfig:
    """Build and validate an ``LMConfig`` from a nested dict."""
    cfg = fill_dataclass(LMConfig, dict(data or {}), choices=_CHOICES)
    _validate(cfg)
    return cfg


def lm_config_to_dict(cfg: LMConfig) -> dict:
    return dataclasses.asdict(cfg)


def is_lm_recipe(path: str | Path | None) -> bool:
    """True when ``path`` is a YAML recipe with ``task: lm`` (what ``stimulative train`` dispatches on)."""
    if path is None or not str(path).endswith((".yaml", ".yml")) or not Path(path).is_file():
        return False
    try:
        return read_recipe(path).get("task") == "lm"
    except ConfigError:
        return False


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


def load_lm_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> LMConfig:
    """Read a recipe (or start from the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data = read_recipe(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    return lm_config_from_dict(data)


def save_lm_config(cfg: LMConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(lm_config_to_dict(cfg), sort_keys=False))


def default_eval_depths(num_layers: int) -> list[int]:
    """L/4, L/2, 3L/4 (distinct, between 1 and L-1): 2, 4, 6 of 8."""
    return sorted({d for d in (num_layers // 4, num_layers // 2, 3 * num_layers // 4) if 1 <= d < num_layers})
