"""Model registry: the CIFAR ResNet family plus torchvision and timm builders behind one ``create_model``.

Names resolve in this order:
  1. our registry (``cifar_resnet20`` ... ``cifar_resnet110``, see ``list_models()``),
  2. ``timm/<name>`` -> ``timm.create_model(name, ...)``,
  3. anything else -> ``torchvision.models.get_model(name, ...)``.

The CIFAR ResNets follow He et al. 2016 (arXiv 1512.03385, Sec. 4.2): 3 stages of n BasicBlocks with 16/32/64
channels, 6n+2 layers. ``shortcut="A"`` (default, as in the paper's CIFAR experiments) uses parameter-free
identity shortcuts that subsample and zero-pad channels; ``shortcut="B"`` uses 1x1 conv + BN projections when
the shape changes.

The registry also knows each family's other depths: ``with_depths`` gives the ``create_model`` arguments of the
same family with other blocks per stage (the "trained alone" baselines of the loafing analysis), and
``plain_architecture``/``plain_architecture_code`` build or describe an extracted sub-network's architecture with
torchvision, timm or ``CifarResNet`` directly (what an exported state_dict loads into without this package).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "BasicBlock", "register_model", "create_model", "list_models", "with_depths",
           "plain_architecture", "plain_architecture_code"]

_MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model builder under its function name (as timm's ``@register_model``)."""
    _MODEL_REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the models in our own registry (torchvision and timm names work too, see ``create_model``)."""
    return sorted(_MODEL_REGISTRY)


def create_model(name: str, num_classes: int = 1000, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: ``cifar_resnet56`` (our registry), ``timm/<timm name>`` or a torchvision model name (``resnet50``).
        num_classes: size of the classifier.
        pretrained: load the library's pretrained weights (torchvision/timm; needs a download).
        **kwargs: passed to the builder (e.g. ``shortcut="B"``, ``img_size=32``, ``drop_path_rate=0.1``).

    Example:
        >>> import stimulative as st
        >>> model = st.create_model("cifar_resnet20", num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if name in _MODEL_REGISTRY:
        if pretrained:
            raise ValueError(f"no pretrained weights are shipped for {name!r}")
        return _MODEL_REGISTRY[name](num_classes=num_classes, **kwargs)
    if name.startswith("timm/"):
        import timm

        timm_name = name[len("timm/"):]
        if not timm.is_model(timm_name):
            raise ValueError(f"unknown timm model {timm_name!r}; see timm.list_models()")
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(
            f"unknown model {name!r}: not in our registry {list_models()}, not a torchvision model, "
            "and not of the form 'timm/<name>'"
        )
    weights = "DEFAULT" if pretrained else None
    if pretrained and num_classes != 1000:
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
        _replace_classifier(model, num_classes)
        return model
    return torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kwargs)


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif isinstance(getattr(model, "classifier", None), nn.Sequential) and isinstance(model.classifier[-1], nn.Linear):
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    else:
        raise ValueError(f"cannot replace the classifier of {type(model).__name__}; pass num_classes=1000")


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channel dimension (no parameters)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        pad = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, pad, self.extra_channels - pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU after the addition (post-activation, as He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None  # None <=> identity shortcut <=> the block can be skipped
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.downsample = _PadShortcut(stride, planes - in_planes)
            elif shortcut == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: stem conv 16, stages ``layer1..layer3`` of ``blocks_per_stage`` BasicBlocks."""

    def __init__(self, blocks_per_stage: int | list[int], num_classes: int = 10, shortcut: str = "A",
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if isinstance(blocks_per_stage, int):
            blocks_per_stage = [blocks_per_stage] * 3
        if len(blocks_per_stage) != 3 or min(blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage must be 3 positive ints, got {blocks_per_stage}")
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks_per_stage)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, width, stride if j == 0 else 1, shortcut))
                in_planes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def blocks_per_stage(self) -> list[int]:
        """Blocks in each stage (read from the stages, so an extracted sub-network reports its own)."""
        return [len(self.layer1), len(self.layer2), len(self.layer3)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _cifar_builder(n: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, shortcut: str = "A", blocks_per_stage: int | list[int] | None = None,
              **kwargs) -> nn.Module:
        # blocks_per_stage overrides the depth, e.g. a (1,2,3) network trained alone for the loafing analysis
        return CifarResNet(n if blocks_per_stage is None else blocks_per_stage, num_classes=num_classes,
                           shortcut=shortcut, **kwargs)

    build.__name__ = f"cifar_resnet{6 * n + 2}"
    build.__doc__ = f"CIFAR ResNet-{6 * n + 2}: 3 stages x {n} BasicBlocks (He et al. 2016)."
    return build


for _n in (3, 5, 7, 9, 18):  # ResNet-20, 32, 44, 56, 110
    register_model(_cifar_builder(_n))


@register_model
def cifar_resnet_tiny(num_classes: int = 10, blocks_per_stage: int | list[int] = 2, **kwargs) -> nn.Module:
    """A 3x2-block, 8/16/32-channel CIFAR ResNet for tests and the offline demo (seconds on a CPU)."""
    kwargs.setdefault("widths", (8, 16, 32))
    return CifarResNet(blocks_per_stage, num_classes=num_classes, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# The same family with other depths
# --------------------------------------------------------------------------------------------------------------

def with_depths(name: str, depths: Sequence[int], kwargs: dict | None = None) -> tuple[str, dict]:
    """The ``create_model`` name and keyword arguments of model family ``name`` with ``depths`` blocks per stage.

    A CIFAR ResNet with the same depth in every stage is the registered network of that size (``[3, 3, 3]`` ->
    ``cifar_resnet20``); any other depth goes to the builder's ``blocks_per_stage``.

    Example:
        >>> with_depths("cifar_resnet56", [3, 3, 3])
        ('cifar_resnet20', {})
        >>> with_depths("cifar_resnet56", [1, 2, 3], {"shortcut": "B"})
        ('cifar_resnet56', {'shortcut': 'B', 'blocks_per_stage': [1, 2, 3]})
    """
    depths = [int(d) for d in depths]
    kwargs = {k: v for k, v in (kwargs or {}).items() if k != "blocks_per_stage"}
    if re.fullmatch(r"cifar_resnet\d+", name) and len(set(depths)) == 1 and \
            f"cifar_resnet{6 * depths[0] + 2}" in _MODEL_REGISTRY:
        return f"cifar_resnet{6 * depths[0] + 2}", kwargs
    return name, {**kwargs, "blocks_per_stage": depths}


def _stage_lengths(model: nn.Module) -> list[int] | None:
    names = sorted((n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()),
                   key=lambda s: int(s[5:]))
    return [len(getattr(model, n)) for n in names] or None


def _plain_spec(model: nn.Module, model_name: str, num_classes: int,
                model_kwargs: dict | None) -> tuple[Callable[..., nn.Module], dict[str, Any], str] | None:
    """(builder, keyword arguments, equivalent Python code) of ``model``'s architecture at its current depths."""
    import torchvision

    kwargs = dict(model_kwargs or {})
    layers = _stage_lengths(model)
    if isinstance(model, torchvision.models.resnet.ResNet) and layers:
        block = type(model.layer1[0])
        args = {"block": block, "layers": layers, "num_classes": num_classes, "groups": model.groups,
                "width_per_group": model.base_width}
        code = (f"torchvision.models.resnet.ResNet(torchvision.models.resnet.{block.__name__}, {layers}, "
                f"num_classes={num_classes}, groups={model.groups}, width_per_group={model.base_width})")
        return torchvision.models.resnet.ResNet, args, code
    if isinstance(model, CifarResNet) and layers:
        widths = tuple(getattr(model, f"layer{i + 1}")[0].conv2.out_channels for i in range(len(layers)))
        args = {"blocks_per_stage": layers, "num_classes": num_classes, "shortcut": model.shortcut,
                "widths": widths}
        code = (f"stimulative.models.CifarResNet({layers}, num_classes={num_classes}, "
                f"shortcut={model.shortcut!r}, widths={widths})")
        return CifarResNet, args, code
    if model_name.startswith("timm/"):
        import timm

        name = model_name[len("timm/"):]
        blocks = getattr(model, "blocks", None)
        if layers:
            depth_arg: dict[str, Any] = {"layers": layers}
        elif isinstance(blocks, nn.Sequential) and len(blocks) and not isinstance(blocks[0], nn.Sequential):
            depth_arg = {"depth": len(blocks)}
        else:
            return None
        args = {"model_name": name, "num_classes": num_classes, **kwargs, **depth_arg}
        code = "timm.create_model(" + ", ".join(
            [repr(name)] + [f"{k}={v!r}" for k, v in args.items() if k != "model_name"]) + ")"
        return timm.create_model, args, code
    return None


def plain_architecture_code(model: nn.Module, model_name: str, num_classes: int,
                            model_kwargs: dict | None = None) -> str | None:
    """Python code that builds ``model``'s architecture (at its current depths) with torchvision/timm.

    ``None`` when there is no such builder (e.g. MobileNet sub-networks: use torchscript/onnx, or
    ``stimulative.train.checkpoint.load_model``). Our CIFAR ResNets are built with ``stimulative.models.CifarResNet``.
    """
    spec = _plain_spec(model, model_name, num_classes, model_kwargs)
    return None if spec is None else spec[2]


def plain_architecture(model: nn.Module, model_name: str, num_classes: int,
                       model_kwargs: dict | None = None) -> nn.Module | None:
    """Build ``model``'s architecture (at its current depths) straight from torchvision/timm, untrained.

    The exported ``state_dict`` of a sub-network loads into it with ``strict=True``. ``None`` when unsupported.

    Args:
        model: the (extracted) model whose architecture to rebuild.
        model_name: its ``create_model`` name (``"resnet50"``, ``"timm/vit_small_patch16_224"``, ...).
        num_classes: classifier size.
        model_kwargs: extra builder arguments the model was created with (``cfg.model.kwargs``).

    Example:
        >>> import stimulative as st
        >>> ed = st.ElasticDepth(st.create_model("resnet18", num_classes=10))
        >>> small = ed.extract([2, 1, 1, 2])
        >>> plain = plain_architecture(small, "resnet18", 10)
        >>> plain.load_state_dict(small.state_dict())
        <All keys matched successfully>
    """
    spec = _plain_spec(model, model_name, num_classes, model_kwargs)
    if spec is None:
        return None
    builder, args, _ = spec
    return builder(**args)
