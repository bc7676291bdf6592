"""Export sub-networks of a depth-elastic model as standalone models ("train once, deploy many depths").

A stimulatively trained network holds good sub-networks at every depth. ``extract_subnetwork`` cuts one out
(skipped blocks physically removed, ``ElasticDepth.extract``) and re-estimates its BatchNorm statistics for that
depth; ``export_model`` writes it in a deployable format and checks that the written file reproduces the
in-library sub-network's outputs.

Formats (``EXPORT_FORMATS``):
  * ``pt``: our checkpoint dict (``"format": "stimulative-v1"``, ``"config"``, ``"depths"``, ...) that
    ``stimulative.checkpoint.load_model`` and ``stimulative eval`` load. Its ``"model"`` entry is a plain
    ``state_dict`` that loads strictly into the same architecture built with fewer blocks, e.g.
    ``torchvision.models.resnet.ResNet(BasicBlock, [2, 1, 2, 2])`` or ``timm.create_model(name, depth=d)``
    (see ``plain_architecture``) -- no stimulative needed to use the weights.
  * ``torchscript``: a ``torch.jit.trace`` graph (``torch.jit.load(path)``).
  * ``onnx``: ``torch.onnx.export`` (legacy TorchScript exporter, opset 17, dynamic batch axis; input
    ``"input"``, output ``"logits"``), checked with onnxruntime when it is installed.
  * ``safetensors``: the ``state_dict`` via ``safetensors.torch.save_file`` plus a JSON sidecar
    (``<out>.json``: model name, depths, num_classes, input size, normalisation, how to build the architecture).
  * ``backbone``: a plain ``state_dict`` without the classifier head (torchvision ResNet keys minus ``fc.*``) for
    detection/segmentation frameworks (``export_backbone``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core.bn import recalibrate_bn
from .core.elastic import ElasticDepth

__all__ = [
    "EXPORT_FORMATS", "extract_subnetwork", "export_model", "export_backbone", "backbone_state_dict",
    "classifier_prefixes", "plain_architecture", "plain_architecture_code", "count_parameters",
    "check_format", "write_json",
]

EXPORT_FORMATS = ("pt", "torchscript", "onnx", "safetensors", "backbone")
ONNX_OPSET = 17
_TOLERANCE = 1e-4


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is a supported export format, else raise a one-line ``ValueError`` listing them."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unsupported export format {fmt!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    return fmt


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics not included)."""
    return sum(p.numel() for p in model.parameters())


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + rename)."""
    path = Path(path)
    with _atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (Path, torch.dtype)):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """Yield a temp file name next to ``path``; on success it replaces ``path`` (a crash leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Cutting a sub-network out
# --------------------------------------------------------------------------------------------------------------

def extract_subnetwork(ed: ElasticDepth, depths: Sequence | None = None, bn_batches: Iterable | None = None,
                       bn_images: int = 0, progress: bool = False) -> nn.Module:
    """A standalone copy of a sub-network, skipped blocks removed, BN statistics re-estimated for its depth.

    Args:
        ed: the ``ElasticDepth`` of the trained model (the model itself is not modified).
        depths: ordered depth config, one int per stage (``None`` = full network).
        bn_batches: training batches (``(x, y)`` or ``x``) for the BatchNorm re-estimation.
        bn_images: number of training images for the re-estimation (0 = keep the trained statistics).
        progress: show a tqdm bar during the re-estimation.

    Returns:
        The sub-network in eval mode.

    Example:
        >>> import stimulative as st
        >>> from stimulative.export import extract_subnetwork
        >>> ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
        >>> small = extract_subnetwork(ed, [1, 2, 3])
        >>> [len(small.layer1), len(small.layer2), len(small.layer3)]
        [1, 2, 3]
    """
    sub = ed.extract(list(depths) if depths is not None else None)
    if bn_images > 0:
        if bn_batches is None:
            raise ValueError("bn_images > 0 needs bn_batches (training images)")
        recalibrate_bn(sub, bn_batches, bn_images, progress=progress)
    return sub.eval()


# --------------------------------------------------------------------------------------------------------------
# The same architecture built directly by torchvision / timm
# --------------------------------------------------------------------------------------------------------------

def _stage_lengths(model: nn.Module) -> list[int] | None:
    names = sorted((n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()),
                   key=lambda s: int(s[5:]))
    return [len(getattr(model, n)) for n in names] or None


def _plain_spec(model: nn.Module, model_name: str, num_classes: int,
                model_kwargs: dict | None) -> tuple[Any, dict[str, Any], str] | None:
    """(builder, keyword arguments, equivalent Python code) of ``model``'s architecture at its current depths."""
    import torchvision

    from .models import CifarResNet

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
            depth_arg = {"layers": layers}
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
    ``stimulative.checkpoint.load_model``). Our CIFAR ResNets are built with ``stimulative.models.CifarResNet``.
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


# --------------------------------------------------------------------------------------------------------------
# Backbones for downstream work
# --------------------------------------------------------------------------------------------------------------

def classifier_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the classifier head (``fc.`` for ResNets, ``head.`` for timm ViT, ...)."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm
        head = get_classifier()
        for name, module in model.named_modules():
            if module is head and name:
                return [name + "."]
    for name in ("fc", "classifier", "head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return [name + "."]
    raise ValueError(f"cannot find the classifier head of {type(model).__name__} (looked for fc, classifier, head)")


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` without the classifier head (keys otherwise unchanged)."""
    prefixes = tuple(classifier_prefixes(model))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def export_backbone(model: nn.Module | ElasticDepth, path: str | Path, depths: Sequence | None = None) -> Path:
    """Save the network (or the sub-network ``depths``) as a plain backbone ``state_dict`` without the head.

    For a torchvision ResNet the keys are exactly those of ``torchvision.models.resnet50()`` (or the model's
    own depth) minus ``fc.*``, so detection/segmentation code loads it as a ResNet backbone::

        body = resnet_fpn_backbone(backbone_name="resnet50", weights=None).body
        body.load_state_dict(torch.load("r50_backbone.pth", weights_only=True))   # strict

    Args:
        model: a plain (or extracted) model, or an ``ElasticDepth`` (then ``depths`` picks the sub-network).
        path: output file (``torch.save`` of a dict of tensors, written atomically).
        depths: sub-network to cut out first (needs an ``ElasticDepth``; re-estimate BN with
            ``extract_subnetwork`` first if you need that).
    """
    if isinstance(model, ElasticDepth):
        model = model.extract(list(depths) if depths is not None else None)
    elif depths is not None:
        raise ValueError("depths needs an ElasticDepth; pass ElasticDepth(model) or an extracted model")
    from .train.checkpoint import save_checkpoint

    return save_checkpoint(backbone_state_dict(model), path)


# --------------------------------------------------------------------------------------------------------------
# Writing and checking every format
# --------------------------------------------------------------------------------------------------------------

def _example_input(input_size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, input_size, input_size, generator=g)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # torch.jit / legacy ONNX export emit deprecation and constant-folding warnings that do not concern users
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a safetensors export: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def export_model(model: nn.Module, path: str | Path, fmt: str, *, model_name: str, num_classes: int,
                 depths: Sequence | None, input_size: int, config: dict | None = None,
                 extra: dict | None = None, verify: bool = True) -> dict[str, Any]:
    """Write an (extracted) model in ``fmt`` and check that the file reproduces its outputs.

    Args:
        model: the standalone model to export (e.g. from ``extract_subnetwork``).
        path: output file.
        fmt: one of ``EXPORT_FORMATS``.
        model_name: the ``create_model`` name it was built from (recorded; used for the plain architecture).
        num_classes: classifier size.
        depths: the depth config it was cut at (recorded; ``pt`` needs it for ``load_model``).
        input_size: square input side used for tracing/ONNX and the check.
        config: the training config dict (``pt`` needs it; recorded in the checkpoint).
        extra: more entries for the ``pt`` checkpoint / safetensors sidecar (e.g. metrics, normalisation).
        verify: reload the written file and compare outputs on a random batch of 2 (``max_abs_diff``).

    Returns:
        A summary dict: format, files written, params, plain architecture code, max_abs_diff, verified_with.

    Example:
        >>> import stimulative as st
        >>> ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
        >>> small = ed.extract([1, 1, 1]).eval()
        >>> info = export_model(small, "/tmp/r8.onnx", "onnx", model_name="cifar_resnet20", num_classes=10,
        ...                     depths=[1, 1, 1], input_size=32)
        >>> info["max_abs_diff"] < 1e-4
        True
    """
    check_format(fmt)
    path = Path(path).expanduser()
    model = model.eval()
    model_kwargs = (config or {}).get("model", {}).get("kwargs") or {}
    code = plain_architecture_code(model, model_name, num_classes, model_kwargs)
    depths = [int(d) for d in depths] if depths is not None else None
    meta = {"model": model_name, "depths": depths, "num_classes": num_classes, "input_size": input_size,
            "plain_architecture": code, **(extra or {})}
    files = [path]
    if fmt == "pt":
        if config is None or depths is None:
            raise ValueError("format 'pt' needs the training config and the depth config")
        from .train.checkpoint import save_checkpoint
        from .train.state import exported_checkpoint

        save_checkpoint(exported_checkpoint(model, config, num_classes, depths, extra), path)
    elif fmt == "torchscript":
        with _quiet_export(), torch.no_grad(), _atomic_path(path) as tmp:
            traced = torch.jit.trace(model, _example_input(input_size))
            torch.jit.save(traced, tmp)
    elif fmt == "onnx":
        with _quiet_export(), torch.no_grad(), _atomic_path(path) as tmp:
            torch.onnx.export(model, (_example_input(input_size),), tmp, opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        with _atomic_path(path) as tmp:
            save_file(state, tmp, metadata={k: json.dumps(v, default=_json_default) for k, v in meta.items()})
        files.append(write_json({"format": "safetensors", **meta}, sidecar_path(path)))
    else:  # backbone
        export_backbone(model, path)
    summary: dict[str, Any] = {"format": fmt, "files": [str(f) for f in files], "params": count_parameters(model),
                               "plain_architecture": code}
    if fmt == "backbone":
        summary["params"] = sum(v.numel() for k, v in model.named_parameters()
                                if not k.startswith(tuple(classifier_prefixes(model))))
    if verify:
        summary.update(_verify(model, path, fmt, model_name, num_classes, input_size, model_kwargs))
    return summary


def _verify(model: nn.Module, path: Path, fmt: str, model_name: str, num_classes: int, input_size: int,
            model_kwargs: dict) -> dict[str, Any]:
    x = _example_input(input_size, batch=2, seed=1)
    with torch.inference_mode():
        reference = model(x)
    verified_with = ""
    if fmt == "pt":
        from .train.checkpoint import load_model

        reloaded = load_model(path).model
        verified_with = "stimulative.checkpoint.load_model"
        plain = plain_architecture(model, model_name, num_classes, model_kwargs)
        if plain is not None:  # the state_dict also fits the architecture built by torchvision/timm directly
            plain.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
            reloaded, verified_with = plain.eval(), "plain architecture, strict load_state_dict"
    elif fmt == "torchscript":
        with _quiet_export():
            reloaded = torch.jit.load(str(path))
        verified_with = "torch.jit.load"
    elif fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            import onnx

            onnx.checker.check_model(str(path))
            return {"max_abs_diff": None, "verified_with": "onnx.checker (onnxruntime not installed)"}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        return _compare(reference, output, "onnxruntime (batch 2, dynamic batch axis)")
    elif fmt == "safetensors":
        from safetensors.torch import load_file

        reloaded = plain_architecture(model, model_name, num_classes, model_kwargs)
        verified_with = "safetensors load_file + plain architecture, strict load_state_dict"
        if reloaded is None:
            reloaded = copy.deepcopy(model)
            verified_with = "safetensors load_file + strict load_state_dict"
        reloaded.load_state_dict(load_file(str(path)), strict=True)
        reloaded.eval()
    else:  # backbone: the head is gone, so compare keys and the features before the head
        state = torch.load(path, weights_only=True)
        expected = backbone_state_dict(model)
        if sorted(state) != sorted(expected):
            raise ValueError(f"backbone export of {path} has unexpected keys")
        diff = max((float((state[k].double() - v.double()).abs().max()) for k, v in expected.items()
                    if v.numel()), default=0.0)
        return {"max_abs_diff": diff, "verified_with": "torch.load (keys equal to the model minus its head)"}
    with torch.inference_mode():
        output = reloaded(x)
    return _compare(reference, output, verified_with)


def _compare(reference: torch.Tensor, output: torch.Tensor, how: str) -> dict[str, Any]:
    if output.shape != reference.shape:
        raise ValueError(f"exported model ({how}) returns shape {tuple(output.shape)}, expected "
                         f"{tuple(reference.shape)}")
    diff = float((output.float() - reference.float()).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if not diff <= _TOLERANCE * scale:
        raise ValueError(f"exported model ({how}) does not reproduce the sub-network: max |diff| = {diff:.3g}")
    return {"max_abs_diff": diff, "verified_with": how}
