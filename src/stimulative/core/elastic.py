"""Elastic depth: run any residual model with the later blocks of each stage skipped, on the same weights.

``ElasticDepth(model)`` finds the model's residual stages (or takes them from ``stages=``) and patches each
skippable block in place so that it can be told to *run* (normal), *skip* (output = input, i.e. the identity
path) or run its *branch* only (output = block(x) - x, the residual increment; used by raw sampling of the
unraveled view). Patching swaps the block's class for a subclass with a gated ``forward``: parameters,
buffers, ``state_dict`` keys, ``isinstance`` checks and ``copy.deepcopy`` are unaffected, so weights load into
plain torchvision/timm models unchanged.

Depth configurations come in two forms:
  * a sequence of ints, one per stage: run the FIRST ``d_i`` blocks of stage i (ordered residual sampling);
  * a sequence of per-stage tuples of block modes (``RUN``/``SKIP``/``BRANCH``), one mode per block.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .droppath import batch_dropped, clear_drop_path, drop_residual

__all__ = ["ElasticDepth", "Stage", "RUN", "SKIP", "BRANCH", "DepthConfig", "find_stages", "parse_depths",
           "format_depths", "gated_subclass"]

RUN, SKIP, BRANCH = 1, 0, 2
_MODE_NAMES = {RUN: "run", SKIP: "skip", BRANCH: "branch"}

DepthConfig = Sequence[int] | Sequence[Sequence[int]]


@dataclass
class Stage:
    """One residual stage: its name, its blocks in order and which of them may be skipped."""

    name: str
    blocks: list[nn.Module]
    block_names: list[str]
    skippable: list[bool]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def min_depth(self) -> int:
        """Smallest d such that keeping the first d blocks never skips an unskippable block (at least 1)."""
        last_fixed = max((i for i, s in enumerate(self.skippable) if not s), default=0)
        return last_fixed + 1


# --------------------------------------------------------------------------------------------------------------
# Which blocks are residual with an identity shortcut
# --------------------------------------------------------------------------------------------------------------

def _is_skippable(block: nn.Module) -> bool | None:
    """True/False when the block's type tells us; None when unknown."""
    if hasattr(block, "use_res_connect"):  # torchvision MobileNetV2/V3 InvertedResidual
        return bool(block.use_res_connect)
    if hasattr(block, "has_skip"):  # timm EfficientNet/MobileNet blocks
        return bool(block.has_skip)
    if hasattr(block, "downsample") and hasattr(block, "conv1"):  # torchvision/timm/our ResNet blocks
        ds = block.downsample
        return ds is None or isinstance(ds, nn.Identity)
    cls = type(block).__name__
    if cls in {"Block", "ResPostBlock", "ParallelScalingBlock", "LayerScaleBlock"} and hasattr(block, "attn"):
        return True  # timm ViT/DeiT/CaiT blocks: x + attn(x) + mlp(x), shape preserving
    if cls == "EncoderBlock" and hasattr(block, "self_attention"):
        return True  # torchvision ViT blocks: x + attn(ln(x)), then + mlp(ln(.)), shape preserving
    if cls == "ConvNeXtBlock":
        return getattr(block, "shortcut", None) is None or isinstance(block.shortcut, nn.Identity)
    return None


def _children_list(module: nn.Module) -> tuple[list[str], list[nn.Module]]:
    names, mods = zip(*module.named_children()) if len(list(module.children())) else ((), ())
    return list(names), list(mods)


def find_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Discover residual stages: a list of (stage name, [qualified block names]).

    Supported: torchvision ResNet/ResNeXt/Wide-ResNet and our CIFAR ResNets (``layer1..``), timm ResNets,
    torchvision ViT (``encoder.layers``: one stage), torchvision MobileNetV2/V3 (``features``: runs of
    inverted residuals, each run starting with the block that changes shape), timm EfficientNet/MobileNetV3 (``blocks`` of stage Sequentials), timm ViT/DeiT (``blocks``:
    one stage), timm ConvNeXt (``stages[i].blocks``).
    """
    stages: list[tuple[str, list[str]]] = []
    layer_names = [n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    if layer_names:
        for n in sorted(layer_names, key=lambda s: int(s[5:])):
            seq = getattr(model, n)
            names, _ = _children_list(seq)
            stages.append((n, [f"{n}.{c}" for c in names]))
        return stages
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) > 0:
        first = blocks[0]
        if isinstance(first, nn.Sequential):  # timm EfficientNet / MobileNetV3: blocks[i] is a stage
            for sname, seq in blocks.named_children():
                names, _ = _children_list(seq)
                stages.append((f"blocks.{sname}", [f"blocks.{sname}.{c}" for c in names]))
            return stages
        names, _ = _children_list(blocks)
        return [("blocks", [f"blocks.{c}" for c in names])]
    encoder_layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(encoder_layers, nn.Sequential) and len(encoder_layers) > 0:  # torchvision ViT: one stage
        names, _ = _children_list(encoder_layers)
        return [("encoder.layers", [f"encoder.layers.{c}" for c in names])]
    timm_stages = getattr(model, "stages", None)
    if isinstance(timm_stages, nn.Sequential):
        for sname, stage in timm_stages.named_children():
            inner = getattr(stage, "blocks", None)
            if isinstance(inner, nn.Sequential):
                names, _ = _children_list(inner)
                stages.append((f"stages.{sname}", [f"stages.{sname}.blocks.{c}" for c in names]))
        if stages:
            return stages
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        # torchvision MobileNet: a stage = a non-residual inverted-residual block + the residual blocks after it.
        current: list[str] | None = None
        for cname, child in features.named_children():
            flag = _is_skippable(child)
            if flag is None:
                current = None
                continue
            if not flag:
                current = [f"features.{cname}"]
                stages.append((f"features.{cname}", current))
            elif current is not None:
                current.append(f"features.{cname}")
        return stages
    return stages


def parse_depths(text: str) -> list[int]:
    """Parse ``"3,3,3"`` (CLI form) into ``[3, 3, 3]`` with a clear error."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"depths must be comma-separated integers like 3,3,3, got {text!r}") from None
    if not values:
        raise ValueError(f"depths must be comma-separated integers like 3,3,3, got {text!r}")
    return values


def format_depths(config: DepthConfig, sep: str = ",") -> str:
    """The inverse of ``parse_depths``: ``[1, 2, 3]`` -> ``"1,2,3"``; a stage given as block modes is written as
    its digits (``[(1, 0, 2), 3]`` -> ``"102,3"``).

    ``sep="-"`` gives the form used where a comma cannot stand: metric keys (``test_acc_d1-2-3``, a CSV column)
    and folder names.

    Example:
        >>> format_depths([1, 2, 3]), format_depths([1, 2, 3], sep="-")
        ('1,2,3', '1-2-3')
    """
    return sep.join(str(int(v)) if not isinstance(v, (list, tuple)) else "".join(str(int(m)) for m in v)
                    for v in config)


# --------------------------------------------------------------------------------------------------------------
# Gated forward by class swap
# --------------------------------------------------------------------------------------------------------------

_GATED_CLASSES: dict[tuple[type, Callable], type] = {}


def _gated_forward(self, x, *args, **kwargs):
    mode = self._st_mode
    if mode == SKIP or (mode == RUN and batch_dropped(self)):  # batch_dropped: stochastic depth per batch
        return x
    out = self._st_orig_forward(x, *args, **kwargs)
    if mode == BRANCH:
        return out - x
    return drop_residual(self, x, out)  # stochastic depth / LayerDrop when a rate is set (core.droppath)


def gated_subclass(cls: type, forward: Callable, **attrs: Any) -> type:
    """The subclass of block class ``cls`` whose ``forward`` is ``forward`` (one per ``(cls, forward)``; ``attrs``
    of the first call become further class attributes, which adapters for other block signatures use). The
    original forward stays callable as ``self._st_orig_forward`` and the class as ``_st_original_class`` (what
    ``extract``/``remove`` restore).

    Same name, module and qualname as ``cls``, so ``isinstance`` and ``repr`` behave. The subclass is made at run
    time and cannot be found by name, so a gated block pickles (``torch.save(model)``, ``copy.deepcopy``) as
    ``cls`` + ``forward`` + ``attrs`` and is gated again on load: ``forward`` and the values of ``attrs`` must be
    picklable (module-level functions are).
    """
    if hasattr(cls, "_st_original_class"):
        raise ValueError(f"{cls.__qualname__} is already gated; pass its _st_original_class")
    gated = _GATED_CLASSES.get((cls, forward))
    if gated is None:
        orig_forward = cls.forward

        def _st_orig_forward(self, *args, **kwargs):
            return orig_forward(self, *args, **kwargs)

        gated = _GATED_CLASSES[(cls, forward)] = type(cls.__name__, (cls,), {
            "forward": forward, "_st_orig_forward": _st_orig_forward, "_st_original_class": cls,
            "_st_gated_with": (forward, attrs), "__reduce_ex__": _reduce_gated, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__, **attrs})
    return gated


def _reduce_gated(self: nn.Module, protocol: int) -> tuple:
    """Pickle a gated block through ``_new_gated`` and the class it gates (found by name)."""
    gated = type(self)
    # (copyreg.__newobj__, (gated, *args), state, ...) or (copyreg.__newobj_ex__, (gated, args, kwargs), ...)
    reduced = object.__reduce_ex__(self, max(2, protocol))
    if reduced[0] is copyreg.__newobj_ex__:
        args, kwargs = reduced[1][1], reduced[1][2]
    else:
        args, kwargs = reduced[1][1:], {}
    # the forward given, not gated.forward: a base class's __init_subclass__ may have wrapped it (transformers)
    return (_new_gated, (gated._st_original_class, *gated._st_gated_with, tuple(args), dict(kwargs)),
            *reduced[2:])


def _new_gated(cls: type, forward: Callable, attrs: dict[str, Any], args: tuple = (),
               kwargs: dict[str, Any] | None = None) -> nn.Module:
    """An empty instance of ``cls`` gated with ``forward`` (what an unpickled gated block starts from; ``args`` and
    ``kwargs`` are the class's ``__getnewargs(_ex)__``, if it has them)."""
    gated = gated_subclass(cls, forward, **attrs)
    return gated.__new__(gated, *args, **(kwargs or {}))


class ElasticDepth:
    """Make a residual model depth-elastic in place.

    Based on "Stimulative Training++" (Ye et al., https://arxiv.org/abs/2305.02507): sub-networks keep the first
    ``d_i`` blocks of every stage and skip the rest.

    Args:
        model: the model to patch (modified in place; ``state_dict`` keys are unchanged).
        stages: optional manual spec: names of stage containers (``["layer1", "layer2"]``, each child a block)
            or a list of lists of block names (``[["blocks.0", "blocks.1"], ...]``). Default: auto-discovery.
        skippable: optional override ``{block_name: bool}`` for blocks whose type does not tell whether they
            have an identity shortcut. Unknown blocks in a manual spec default to skippable.

    Example:
        >>> import torch, stimulative as st
        >>> model = st.create_model("cifar_resnet20", num_classes=10)
        >>> ed = st.ElasticDepth(model)
        >>> ed.full_depths
        [3, 3, 3]
        >>> with ed.depth([1, 2, 3]):
        ...     y = model(torch.randn(2, 3, 32, 32))
        >>> small = ed.extract([1, 2, 3])   # plain nn.Module without the skipped blocks
    """

    def __init__(self, model: nn.Module, stages: Sequence[str] | Sequence[Sequence[str]] | None = None,
                 skippable: dict[str, bool] | None = None):
        if isinstance(model, ElasticDepth):
            raise TypeError("model is already an ElasticDepth; pass its .model")
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("wrap the plain model with ElasticDepth before DistributedDataParallel")
        self.model = model
        modules = dict(model.named_modules())
        spec = self._resolve_spec(model, modules, stages)
        skippable = dict(skippable or {})
        self.stages: list[Stage] = []
        found: list[Stage] = []
        for stage_name, block_names in spec:
            blocks, flags = [], []
            for bname in block_names:
                if bname not in modules:
                    raise ValueError(f"block {bname!r} of stage {stage_name!r} is not a submodule of the model")
                block = modules[bname]
                flag = skippable.get(bname)
                if flag is None:
                    flag = _is_skippable(block)
                if flag is None:
                    flag = stages is not None  # manual spec: trust the user; auto: unknown blocks are kept
                blocks.append(block)
                flags.append(bool(flag))
            found.append(Stage(stage_name, blocks, list(block_names), flags))
            if len(blocks) >= 2 and any(flags[1:]):
                self.stages.append(found[-1])
        if not self.stages and found and all(s.depth == 1 for s in found):
            # every stage has one block (a ResNet-8): one configuration, the full network, e.g. to train it alone
            self.stages = found
        if not self.stages:
            raise ValueError(
                f"{type(model).__name__} has no residual stage with a skippable block (a stage of at least 2 "
                "blocks where a block after the first has an identity shortcut); pass stages=['layer1', ...] "
                "or a list of block-name lists to ElasticDepth"
            )
        for stage in self.stages:
            for block, flag in zip(stage.blocks, stage.skippable):
                if flag:
                    self._patch(block)

    @staticmethod
    def _resolve_spec(model: nn.Module, modules: dict[str, nn.Module], stages) -> list[tuple[str, list[str]]]:
        if stages is None:
            return find_stages(model)
        spec: list[tuple[str, list[str]]] = []
        for item in stages:
            if isinstance(item, str):
                if item not in modules:
                    raise ValueError(f"stage {item!r} is not a submodule of {type(model).__name__}; "
                                     f"top-level children are {[n for n, _ in model.named_children()]}")
                children = [n for n, _ in modules[item].named_children()]
                spec.append((item, [f"{item}.{c}" if item else c for c in children]))
            else:
                names = list(item)
                spec.append((names[0] if names else "?", names))
        return spec

    @staticmethod
    def _patch(block: nn.Module) -> None:
        if hasattr(type(block), "_st_original_class"):
            block._st_mode = RUN
            return
        block.__class__ = gated_subclass(type(block), _gated_forward)
        block._st_mode = RUN

    # ----------------------------------------------------------------------------------------------------------
    @property
    def full_depths(self) -> list[int]:
        """Number of blocks of every stage."""
        return [s.depth for s in self.stages]

    @property
    def min_depths(self) -> list[int]:
        """Smallest allowed depth of every stage (at least 1; larger when a later block cannot be skipped)."""
        return [s.min_depth for s in self.stages]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        body = ", ".join(f"{s.name}:{s.depth}" for s in self.stages)
        return f"ElasticDepth({type(self.model).__name__}, stages=[{body}])"

    # ----------------------------------------------------------------------------------------------------------
    def block_modes(self, config: DepthConfig) -> list[list[int]]:
        """Validate a depth config and return the per-block modes of every stage."""
        config = list(config)
        if len(config) != len(self.stages):
            raise ValueError(f"depth config {config} has {len(config)} entries but the model has "
                             f"{len(self.stages)} stages with depths {self.full_depths}")
        modes: list[list[int]] = []
        for i, (item, stage) in enumerate(zip(config, self.stages)):
            if isinstance(item, (int, torch.SymInt)) or hasattr(item, "__index__"):
                d = int(item)
                if not stage.min_depth <= d <= stage.depth:
                    raise ValueError(
                        f"depth {d} for stage {i} ({stage.name}) is outside [{stage.min_depth}, {stage.depth}]; "
                        f"valid depths are min {self.min_depths} to max {self.full_depths}"
                    )
                modes.append([RUN] * d + [SKIP] * (stage.depth - d))
            else:
                row = [int(m) for m in item]
                if len(row) != stage.depth:
                    raise ValueError(f"stage {i} ({stage.name}) has {stage.depth} blocks, got {len(row)} modes")
                for j, (m, ok) in enumerate(zip(row, stage.skippable)):
                    if m not in _MODE_NAMES:
                        raise ValueError(f"block mode must be RUN=1, SKIP=0 or BRANCH=2, got {m}")
                    if m != RUN and not ok:
                        raise ValueError(f"block {stage.block_names[j]} changes shape or has no identity "
                                         f"shortcut and cannot be {_MODE_NAMES[m]}ped")
                modes.append(row)
        return modes

    def set_depth(self, config: DepthConfig | None) -> None:
        """Set the active sub-network (``None`` = full network). Prefer the ``depth`` context manager."""
        if config is None:
            modes = [[RUN] * s.depth for s in self.stages]
        else:
            modes = self.block_modes(config)
        for stage, row in zip(self.stages, modes):
            for block, flag, mode in zip(stage.blocks, stage.skippable, row):
                if flag:
                    block._st_mode = mode

    def current_modes(self) -> list[list[int]]:
        return [[getattr(b, "_st_mode", RUN) for b in s.blocks] for s in self.stages]

    @contextlib.contextmanager
    def depth(self, config: DepthConfig | None) -> Iterator[nn.Module]:
        """Context manager: inside, the model runs the given sub-network; the previous state is always restored."""
        previous = self.current_modes()
        self.set_depth(config)
        try:
            yield self.model
        finally:
            self.set_depth(previous)

    # ----------------------------------------------------------------------------------------------------------
    def num_blocks(self, config: DepthConfig | None = None) -> int:
        """Number of blocks that run in a configuration (full network when None)."""
        if config is None:
            return sum(self.full_depths)
        return sum(m != SKIP for row in self.block_modes(config) for m in row)

    def extract(self, config: DepthConfig | None = None) -> nn.Module:
        """A standalone deep copy of the sub-network with the skipped blocks physically removed.

        The result is a plain module (no gating) with the same outputs as running ``config`` in the context
        manager. Stage containers that are ``nn.Sequential`` are rebuilt with the kept blocks renumbered from 0,
        so an ordered config ``[d1, d2, ...]`` yields the state_dict of the same architecture built with
        ``[d1, d2, ...]`` blocks. Configs that use BRANCH modes cannot be extracted.
        """
        modes = self.block_modes(config) if config is not None else [[RUN] * s.depth for s in self.stages]
        if any(m == BRANCH for row in modes for m in row):
            raise ValueError("configs with BRANCH (raw sampling) modes cannot be extracted as a plain model")
        clone = copy.deepcopy(self.model)
        # Collect the blocks to drop per parent container first: several stages may share one parent
        # (torchvision MobileNet's ``features``), and renumbering must happen once per parent.
        drops: dict[str, set[str]] = {}
        for stage, row in zip(self.stages, modes):
            for name, mode in zip(stage.block_names, row):
                parent_name, _, local = name.rpartition(".")
                drops.setdefault(parent_name, set())
                if mode != RUN:
                    drops[parent_name].add(local)
        for parent_name, drop_local in drops.items():
            parent = clone.get_submodule(parent_name) if parent_name else clone
            if not drop_local:
                continue
            if isinstance(parent, nn.Sequential):
                kept = [child for name, child in parent.named_children() if name not in drop_local]
                _set_submodule(clone, parent_name, nn.Sequential(*kept))
            else:
                for name in drop_local:
                    setattr(parent, name, nn.Identity())
        for m in clone.modules():
            orig = getattr(type(m), "_st_original_class", None)
            if orig is not None:
                m.__class__ = orig
                if "_st_mode" in m.__dict__:
                    del m.__dict__["_st_mode"]
        clear_drop_path(clone)  # a plain module: no stochastic depth if it is trained again
        return clone

    def remove(self) -> nn.Module:
        """Undo the patching (the model becomes a plain model again) and return it."""
        for stage in self.stages:
            for block in stage.blocks:
                orig = getattr(type(block), "_st_original_class", None)
                if orig is not None:
                    block.__class__ = orig
                    block.__dict__.pop("_st_mode", None)
        clear_drop_path(self.model)
        return self.model


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise ValueError("cannot replace the root module")
    parent_name, _, local = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, local, new)
