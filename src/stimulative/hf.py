"""Hugging Face ``transformers`` models with elastic depth: the one place that finds and cuts their layers.

Supported families (built from a config or loaded with ``from_pretrained``; nothing is downloaded here, and this
module does not import ``transformers`` itself):

* staged vision models (``config.depths``): ``ResNetForImageClassification``, ``ConvNextForImageClassification``
  (and other ``<base>.encoder.stages[i].layers`` models): one elastic stage per encoder stage;
* single-stage transformers (``config.num_hidden_layers``): ``ViTForImageClassification`` and causal LMs
  (``LlamaForCausalLM``, ``GPT2LMHeadModel``, and models with the same layout: ``<base>.layers``,
  ``<base>.h``, ``<base>.encoder.layer``...): one elastic stage of all layers. A sub-network runs the kept
  layers, then whatever follows them (final norm, pooler, classifier or LM head).

Usage::

    from stimulative import hf
    ed = hf.elastic_depth(hf_model)          # st.ElasticDepth; ed.model(x) returns the logits tensor
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=2)
    small = hf.extract_pretrained(ed, [2])   # a plain hf model of the same class with 2 layers
    small.save_pretrained("out")             # AutoModel...from_pretrained("out") loads it

Layers are skipped by the same class swap as ``st.ElasticDepth``, with an adapter forward that accepts the
layer's own call signature (hidden states first, then any keyword arguments) and returns what the layer
returns: a tensor, or a tuple with the hidden states first (older ``transformers`` versions) where the other
entries of a skipped layer are ``None``.

Users: ``stimulative.lm`` (LM runs, their export and decoding) and the Hugging Face ``Trainer`` integration
(``stimulative.integrations.transformers``), both above this module.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.droppath import batch_dropped, drop_residual
from .core.elastic import BRANCH, RUN, SKIP, ElasticDepth, gated_subclass
from .core.exits import PrefixExits

__all__ = [
    "Logits", "HFElasticDepth", "LayerStage", "find_layer_stages", "elastic_depth", "extract_pretrained",
    "SUPPORTED_MODEL_TYPES", "keep_layers", "output_tail", "prefix_exits",
]

# Model types whose layout is tested (tests/test_integration_transformers.py); others with the same layout work.
SUPPORTED_MODEL_TYPES = ("resnet", "convnext", "vit", "llama", "gpt2")

# Where the layers of a single-stage model live, relative to its base model (first match wins).
_LAYER_PATHS = ("layers", "h", "layer", "blocks", "encoder.layer", "encoder.layers", "decoder.layers",
                "transformer.h", "encoder.blocks")
# Where the layers of stage i of a staged model (config.depths) live, relative to ``encoder.stages[i]``.
_STAGE_LAYER_NAMES = ("layers", "layer", "blocks")
# Per-layer config lists that must shrink with the layers (kept entries only).
_PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers", "mlp_layer_types")


# --------------------------------------------------------------------------------------------------------------
# Finding the layers
# --------------------------------------------------------------------------------------------------------------

@dataclass
class LayerStage:
    """One run of layers of a ``transformers`` model: the container's path (relative to the hf model), the
    number of layers, whether each can be skipped, and the config field that counts them."""

    path: str
    num_layers: int
    skippable: list[bool]
    config_field: str  # "num_hidden_layers" or "depths[i]"

    @property
    def block_names(self) -> list[str]:
        return [f"{self.path}.{i}" for i in range(self.num_layers)]


def _base(model: nn.Module) -> tuple[str, nn.Module]:
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix + ".", getattr(model, prefix)
    return "", model


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _layer_skippable(layer: nn.Module) -> bool:
    shortcut = getattr(layer, "shortcut", None)  # ResNet layers: a projection shortcut changes the shape
    if shortcut is not None and not isinstance(shortcut, nn.Identity):
        return False
    return True


def find_layer_stages(model: nn.Module) -> list[LayerStage]:
    """The layer runs of a ``transformers`` model, in forward order (see the module docstring).

    Raises ``ValueError`` naming the model when its layers cannot be found.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} is not a transformers model (no .config)")
    prefix, base = _base(model)
    depths = getattr(config, "depths", None)
    stages_container = _get(base, "encoder.stages")
    if isinstance(depths, (list, tuple)) and isinstance(stages_container, (nn.ModuleList, nn.Sequential)):
        out = []
        for i, stage in enumerate(stages_container):
            for name in _STAGE_LAYER_NAMES:
                layers = getattr(stage, name, None)
                if isinstance(layers, (nn.ModuleList, nn.Sequential)) and len(layers) == depths[i]:
                    out.append(LayerStage(f"{prefix}encoder.stages.{i}.{name}", len(layers),
                                          [_layer_skippable(m) for m in layers], f"depths[{i}]"))
                    break
            else:
                raise ValueError(f"cannot find the {depths[i]} layers of stage {i} of {type(model).__name__}")
        return out
    n = getattr(config, "num_hidden_layers", None)
    for path in _LAYER_PATHS:
        layers = _get(base, path)
        if isinstance(layers, (nn.ModuleList, nn.Sequential)) and len(layers) > 0 and (n is None or len(layers) == n):
            return [LayerStage(prefix + path, len(layers), [True] * len(layers), "num_hidden_layers")]
    raise ValueError(f"cannot find the layers of {type(model).__name__} (model_type "
                     f"{getattr(config, 'model_type', '?')!r}); supported layouts: <base>.encoder.stages[i].layers "
                     f"with config.depths, or one of <base>.{{{', '.join(_LAYER_PATHS)}}} with num_hidden_layers")


# --------------------------------------------------------------------------------------------------------------
# Skipping them: an adapter forward for hf layers
# --------------------------------------------------------------------------------------------------------------

def _tuple_len_from_annotation(cls: type) -> int | None:
    """1 when the layer's forward is annotated to return a tuple (older transformers), else None (a tensor)."""
    try:
        ret = inspect.signature(cls.forward).return_annotation
    except (TypeError, ValueError):
        return None
    return 1 if "tuple" in str(ret).lower() else None


def _adapter_forward(self, *args, **kwargs):
    cls = type(self)
    mode = self._st_mode
    x = args[0] if args else kwargs[cls._st_input_name]
    if mode == RUN and batch_dropped(self):  # LayerDrop / stochastic depth per batch: not computed
        mode = SKIP
    if mode == RUN:
        out = self._st_orig_forward(*args, **kwargs)
        cls._st_tuple_len = len(out) if isinstance(out, tuple) else None  # learn what the caller expects
        if isinstance(out, tuple):  # stochastic depth / LayerDrop / LayerSkip when a rate is set
            return (drop_residual(self, x, out[0]),) + tuple(out[1:])
        return drop_residual(self, x, out)
    if mode == SKIP:
        n = cls._st_tuple_len
        return x if n is None else (x,) + (None,) * (n - 1)
    out = self._st_orig_forward(*args, **kwargs)  # BRANCH: the residual increment only
    if isinstance(out, tuple):
        return (out[0] - x,) + tuple(out[1:])
    return out - x


def _adapted_class(cls: type) -> type:
    params = [p for p in inspect.signature(cls.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    input_name = params[1].name if len(params) > 1 else "hidden_states"
    return gated_subclass(cls, _adapter_forward, _st_input_name=input_name,
                          _st_tuple_len=_tuple_len_from_annotation(cls))


class Logits(nn.Module):
    """``Logits(hf_model)(x, **kwargs)`` returns ``hf_model(x, **kwargs).logits`` (a tensor, as
    ``StimulativeStep`` and ``st.evaluate`` expect). The hf model is ``.model``; parameters and buffers are
    the hf model's, with the prefix ``model.``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(x, **kwargs).logits


class HFElasticDepth(ElasticDepth):
    """``ElasticDepth`` whose skippable blocks get the hf adapter forward (see the module docstring)."""

    @staticmethod
    def _patch(block: nn.Module) -> None:
        if not hasattr(type(block), "_st_original_class"):
            block.__class__ = _adapted_class(type(block))
        block._st_mode = RUN


def elastic_depth(model: nn.Module) -> ElasticDepth:
    """Make a ``transformers`` model depth-elastic in place; returns an ``ElasticDepth`` over ``Logits(model)``.

    ``ed.model(x)`` returns the logits, so ``st.StimulativeStep(ed, ...)``, ``ed.depth(...)`` and
    ``st.evaluate_depth`` work as for vision models; ``ed.model.model`` is the hf model (its ``state_dict``
    keys, ``save_pretrained`` and ``generate`` are unchanged). Depth configs have one entry per stage
    (``ed.full_depths``: ``config.depths`` for ResNet/ConvNeXt, ``[num_hidden_layers]`` for ViT and LMs);
    per-block modes give other patterns, e.g. every other layer of an LM: ``[(1, 0, 1, 0)]``.
    """
    if isinstance(model, Logits):
        model = model.model
    stages = find_layer_stages(model)
    wrapper = Logits(model)
    spec = [f"model.{s.path}" for s in stages]
    skippable = {f"model.{n}": flag for s in stages for n, flag in zip(s.block_names, s.skippable)}
    return HFElasticDepth(wrapper, stages=spec, skippable=skippable)


# --------------------------------------------------------------------------------------------------------------
# Cutting them: a save_pretrained-able sub-network
# --------------------------------------------------------------------------------------------------------------

def _kept_layers(ed: ElasticDepth, config: Sequence[Any] | None) -> dict[str, list[int]]:
    modes = ed.block_modes(config) if config is not None else [[RUN] * d for d in ed.full_depths]
    kept: dict[str, list[int]] = {}
    prefix = "model." if isinstance(ed.model, Logits) else ""
    for stage, row in zip(ed.stages, modes):
        if any(m == BRANCH for m in row):
            raise ValueError("configs with BRANCH (raw sampling) modes cannot be extracted as a plain model")
        path = stage.block_names[0].rpartition(".")[0]
        kept[path.removeprefix(prefix)] = [i for i, m in enumerate(row) if m == RUN]
    return kept


def _sub_config(hf_config: Any, stages: list[LayerStage], kept: Mapping[str, list[int]]) -> Any:
    new = copy.deepcopy(hf_config)
    for stage in stages:
        keep = kept.get(stage.path, list(range(stage.num_layers)))
        if stage.config_field == "num_hidden_layers":
            new.num_hidden_layers = len(keep)  # GPT2Config maps it to n_layer
            for name in _PER_LAYER_CONFIG_LISTS:
                values = getattr(new, name, None)
                if isinstance(values, (list, tuple)) and len(values) == stage.num_layers:
                    setattr(new, name, type(values)(values[i] for i in keep))
        else:
            i = int(stage.config_field[len("depths["):-1])
            depths = list(new.depths)
            depths[i] = len(keep)
            new.depths = depths
    return new


def extract_pretrained(model: nn.Module | ElasticDepth, depths: Sequence[Any] | None = None
                       ) -> nn.Module:
    """A plain ``transformers`` model of the same class holding only the kept layers, config updated.

    Args:
        model: the ``ElasticDepth`` of ``elastic_depth``, or the hf model itself (patched or not; it is left as
            it was).
        depths: the depth config as ``ed.depth`` takes it (``[2]`` = first 2 layers of an LM; ``[1, 2]`` for a
            two-stage ResNet; per-block modes for other patterns); None = all layers.

    The result is built from the updated config (``num_hidden_layers``, ``n_layer`` or ``depths``; per-layer
    lists such as ``layer_types`` keep the kept entries) and loads the kept weights renumbered from 0 with
    ``strict=True``, so ``save_pretrained`` / ``from_pretrained`` round-trip with no missing keys and its
    logits equal the depth config's forward.
    """
    if isinstance(model, ElasticDepth):
        ed, temporary = model, False
    else:
        hf = model.model if isinstance(model, Logits) else model
        patched = any(hasattr(type(m), "_st_original_class") for m in hf.modules())
        ed, temporary = elastic_depth(hf), not patched
    try:
        hf = ed.model.model if isinstance(ed.model, Logits) else ed.model
        kept = _kept_layers(ed, depths)
        stages = find_layer_stages(hf)
        new_config = _sub_config(hf.config, stages, kept)
        state = {}
        renumber = {s.path: {old: new for new, old in enumerate(kept.get(s.path, range(s.num_layers)))}
                    for s in stages}
        for key, value in hf.state_dict().items():
            for path, mapping in renumber.items():
                if key.startswith(path + "."):
                    index, _, rest = key[len(path) + 1:].partition(".")
                    if int(index) not in mapping:
                        key = None
                    else:
                        key = f"{path}.{mapping[int(index)]}.{rest}"
                    break
            if key is not None:
                state[key] = value
        first = next(hf.parameters())
        new = type(hf)(new_config).to(device=first.device, dtype=first.dtype)
        new.load_state_dict(state, strict=True)
        if getattr(hf, "generation_config", None) is not None:
            new.generation_config = copy.deepcopy(hf.generation_config)
        new.train(hf.training)
        return new
    finally:
        if temporary:
            ed.remove()


# --------------------------------------------------------------------------------------------------------------
# Prefix exits: sub-networks read off one forward
# --------------------------------------------------------------------------------------------------------------

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "layernorm", "final_layer_norm")


def output_tail(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``hidden -> logits`` through the model's own final norm and head, for the single-stage models: causal
    LMs (Llama, GPT-2 ...: final norm + ``lm_head``, logits for every position) and ViT classifiers (final
    layer norm + ``classifier`` on the CLS token). None for other models."""
    if isinstance(model, Logits):
        model = model.model
    base = getattr(model, "base_model", None)
    norm = next((getattr(base, n) for n in _FINAL_NORMS if isinstance(getattr(base, n, None), nn.Module)), None)
    if base is None or norm is None or base is model:
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        return lambda h: head(norm(h))
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Module) and len(find_layer_stages(model)) == 1:
        return lambda h: classifier(norm(h)[:, 0])
    return None


def prefix_exits(ed: ElasticDepth, rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> PrefixExits | None:
    """``PrefixExits`` of a ``transformers`` model made elastic by ``elastic_depth`` (None when its
    sub-networks are not prefixes with a known tail: multi-stage models).

    Args:
        ed: ``elastic_depth(model)``.
        rows: ``rows(logits, x)`` -> the rows the step's model returns (``TokenLogits.select_rows`` for token
            losses); default: the logits as they are.

    Example:
        >>> step = st.StimulativeStep(ed, space, num_subnets=3, model=TokenLogits(hf_model),
        ...                           exits=prefix_exits(ed, rows=TokenLogits(hf_model).select_rows))  # doctest: +SKIP
    """
    if ed.num_stages != 1:
        return None
    tail = output_tail(ed.model)
    if tail is None:
        return None
    if rows is None:
        return PrefixExits(ed, lambda h, x: tail(h))
    return PrefixExits(ed, lambda h, x: rows(tail(h), x))


def keep_layers(ed: ElasticDepth, layers: Sequence[int]) -> list[tuple[int, ...]]:
    """Depth config of a single-stage model (ViT, LMs) running exactly ``layers``, e.g. every other layer
    (SortedNet/LayerDrop): ``keep_layers(ed, range(0, L, 2))``; ``ed.depth`` and ``extract_pretrained`` take it."""
    if ed.num_stages != 1:
        raise ValueError(f"keep_layers is for single-stage models (ViT, LMs); this one has {ed.num_stages} stages")
    keep = set(layers)
    if not keep or not keep <= set(range(ed.full_depths[0])):
        raise ValueError(f"layers must be a non-empty subset of 0..{ed.full_depths[0] - 1}, got {sorted(keep)}")
    return [tuple(RUN if i in keep else SKIP for i in range(ed.full_depths[0]))]
