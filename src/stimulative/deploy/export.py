"""Export sub-networks of a depth-elastic model as standalone models ("train once, deploy many depths").

A stimulatively trained network holds good sub-networks at every depth. ``extract_subnetwork`` cuts one out
(skipped blocks physically removed, ``ElasticDepth.extract``) and re-estimates its BatchNorm statistics for that
depth; ``export_model`` writes it in a deployable format and checks that the written file reproduces the
in-library sub-network's outputs; ``export_run`` does both for a sub-network of an opened run and writes a
summary next to the file.

Formats (``FORMATS``, one ``Format`` each with ``write()`` and ``verify()``):
  * ``pt``: our checkpoint dict (``"format": "stimulative-v1"``, ``"config"``, ``"depths"``, ...) that
    ``stimulative.open_run`` and ``stimulative eval`` load. Its ``"model"`` entry is a plain
    ``state_dict`` that loads strictly into the same architecture built with fewer blocks, e.g.
    ``torchvision.models.resnet.ResNet(BasicBlock, [2, 1, 2, 2])`` or ``timm.create_model(name, depth=d)``
    (see ``stimulative.models.plain_architecture``) -- no stimulative needed to use the weights.
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
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import MissingExtraError, require
from ..core.bn import recalibrated
from ..core.elastic import ElasticDepth
from ..data import normalisation
from ..io import atomic_path, jsonable, write_json
from ..models import plain_architecture, plain_architecture_code
from ..runs import Run, _load
from ..train.checkpoint import load_checkpoint, save_checkpoint
from ..train.config import config_to_dict
from ..train.state import exported_checkpoint, model_weights

__all__ = [
    "EXPORT_FORMATS", "FORMATS", "Format", "ExportTarget", "extract_subnetwork", "export_model", "export_run",
    "export_backbone", "backbone_state_dict", "classifier_prefixes", "count_parameters", "check_format",
    "sidecar_path",
]

ONNX_OPSET = 17
_TOLERANCE = 1e-4


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics not included)."""
    return sum(p.numel() for p in model.parameters())


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
        >>> from stimulative.deploy.export import extract_subnetwork
        >>> ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
        >>> small = extract_subnetwork(ed, [1, 2, 3])
        >>> [len(small.layer1), len(small.layer2), len(small.layer3)]
        [1, 2, 3]
    """
    sub = ed.extract(list(depths) if depths is not None else None)
    with recalibrated(sub, bn_batches, bn_images, progress=progress, restore=False):
        return sub.eval()


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
    return save_checkpoint(backbone_state_dict(model), path)


# --------------------------------------------------------------------------------------------------------------
# Formats: write() and verify() each
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ExportTarget:
    """What an export describes besides the weights: the model's name and kwargs, depths, classes, input size,
    the training config (``pt`` needs it) and extra entries (metrics, normalisation, ...)."""

    model_name: str
    num_classes: int
    depths: list[int] | None
    input_size: int
    config: dict | None = None
    extra: dict | None = None

    @property
    def model_kwargs(self) -> dict:
        return (self.config or {}).get("model", {}).get("kwargs") or {}

    def meta(self, model: nn.Module) -> dict[str, Any]:
        """The description recorded next to the weights (safetensors metadata and sidecar)."""
        return {"model": self.model_name, "depths": self.depths, "num_classes": self.num_classes,
                "input_size": self.input_size,
                "plain_architecture": plain_architecture_code(model, self.model_name, self.num_classes,
                                                              self.model_kwargs), **(self.extra or {})}

    def plain(self, model: nn.Module) -> nn.Module | None:
        return plain_architecture(model, self.model_name, self.num_classes, self.model_kwargs)


class Format:
    """One output format: ``write`` the model to ``path`` (returns every file written), ``verify`` that the
    written file reproduces the model's outputs (returns ``max_abs_diff`` and ``verified_with``)."""

    name = ""

    def write(self, model: nn.Module, path: Path, target: ExportTarget) -> list[Path]:
        raise NotImplementedError

    def verify(self, model: nn.Module, path: Path, target: ExportTarget) -> dict[str, Any]:
        raise NotImplementedError

    def params(self, model: nn.Module) -> int:
        """Parameters the written file holds."""
        return count_parameters(model)


class PtFormat(Format):
    name = "pt"

    def write(self, model: nn.Module, path: Path, target: ExportTarget) -> list[Path]:
        if target.config is None or target.depths is None:
            raise ValueError("format 'pt' needs the training config and the depth config")
        save_checkpoint(exported_checkpoint(model, target.config, target.num_classes, target.depths, target.extra),
                        path)
        return [path]

    def verify(self, model: nn.Module, path: Path, target: ExportTarget) -> dict[str, Any]:
        reloaded, how = _load(path).model, "stimulative.open_run"
        plain = target.plain(model)
        if plain is not None:  # the state_dict also fits the architecture built by torchvision/timm directly
            plain.load_state_dict(model_weights(load_checkpoint(path)), strict=True)
            reloaded, how = plain.eval(), "plain architecture, strict load_state_dict"
        return _compare_outputs(model, reloaded, target, how)


class TorchScriptFormat(Format):
    name = "torchscript"

    def write(self, model: nn.Module, path: Path, target: ExportTarget) -> list[Path]:
        with _quiet_export(), torch.no_grad(), atomic_path(path) as tmp:
            torch.jit.save(torch.jit.trace(model, _example_input(target.input_size)), tmp)
        return [path]

    def verify(self, model: nn.Module, path: Path, target: ExportTarget) -> dict[str, Any]:
        with _quiet_export():
            reloaded = torch.jit.load(str(path))
        return _compare_outputs(model, reloaded, target, "torch.jit.load")


class OnnxFormat(Format):
    name = "onnx"

    def write(self, model: nn.Module, path: Path, target: ExportTarget) -> list[Path]:
        require("onnx", "onnx", "the onnx export format")   # torch.onnx.export writes through it
        with _quiet_export(), torch.no_grad(), atomic_path(path) as tmp:
            torch.onnx.export(model, (_example_input(target.input_size),), tmp, opset_version=ONNX_OPSET,
                              dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return [path]

    def verify(self, model: nn.Module, path: Path, target: ExportTarget) -> dict[str, Any]:
        try:
            ort = require("onnxruntime", "onnx", "verifying an onnx export")
        except MissingExtraError:
            require("onnx", "onnx", "verifying an onnx export").checker.check_model(str(path))
            return {"max_abs_diff": None, "verified_with": "onnx.checker (onnxruntime not installed)"}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])

        return _compare_outputs(model, run, target, "onnxruntime (batch 2, dynamic batch axis)")


class SafetensorsFormat(Format):
    name = "safetensors"

    def write(self, model: nn.Module, path: Path, target: ExportTarget) -> list[Path]:
        save_file = require("safetensors.torch", "safetensors", "the safetensors export format").save_file
        meta = target.meta(model)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, tmp, metadata={k: json.dumps(jsonable(v)) for k, v in meta.items()})
        return [path, write_json({"format": "safetensors", **meta}, sidecar_path(path), indent=2)]

    def verify(self, model: nn.Module, path: Path, target: ExportTarget) -> dict[str, Any]:
        load_file = require("safetensors.torch", "safetensors", "the safetensors export format").load_file
        reloaded, how = target.plain(model), "safetensors load_file + plain architecture, strict load_state_dict"
        if reloaded is None:
            reloaded, how = copy.deepcopy(model), "safetensors load_file + strict load_state_dict"
        reloaded.load_state_dict(load_file(str(path)), strict=True)
        return _compare_outputs(model, reloaded.eval(), target, how)


class BackboneFormat(Format):
    name = "backbone"

    def write(self, model: nn.Module, path: Path, target: ExportTarget) -> list[Path]:
        return [export_backbone(model, path)]

    def verify(self, model: nn.Module, path: Path, target: ExportTarget) -> dict[str, Any]:
        # the head is gone, so compare the keys and the weights
        state = torch.load(path, weights_only=True)
        expected = backbone_state_dict(model)
        if sorted(state) != sorted(expected):
            raise ValueError(f"backbone export of {path} has unexpected keys")
        diff = max((float((state[k].double() - v.double()).abs().max()) for k, v in expected.items()
                    if v.numel()), default=0.0)
        return {"max_abs_diff": diff, "verified_with": "torch.load (keys equal to the model minus its head)"}

    def params(self, model: nn.Module) -> int:
        head = tuple(classifier_prefixes(model))
        return sum(v.numel() for k, v in model.named_parameters() if not k.startswith(head))


FORMATS: dict[str, Format] = {f.name: f for f in (PtFormat(), TorchScriptFormat(), OnnxFormat(),
                                                   SafetensorsFormat(), BackboneFormat())}
EXPORT_FORMATS = tuple(FORMATS)


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is a supported export format, else raise a one-line ``ValueError`` listing them."""
    if fmt not in FORMATS:
        raise ValueError(f"unsupported export format {fmt!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    return fmt


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a safetensors export: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


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


def _compare_outputs(model: nn.Module, reloaded: Any, target: ExportTarget, how: str) -> dict[str, Any]:
    """Run the model and the reloaded file on the same random batch of 2; they must agree to 1e-4 (relative)."""
    x = _example_input(target.input_size, batch=2, seed=1)
    with torch.inference_mode():
        reference, output = model(x), reloaded(x)
    if output.shape != reference.shape:
        raise ValueError(f"exported model ({how}) returns shape {tuple(output.shape)}, expected "
                         f"{tuple(reference.shape)}")
    diff = float((output.float() - reference.float()).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if not diff <= _TOLERANCE * scale:
        raise ValueError(f"exported model ({how}) does not reproduce the sub-network: max |diff| = {diff:.3g}")
    return {"max_abs_diff": diff, "verified_with": how}


# --------------------------------------------------------------------------------------------------------------
# Exporting
# --------------------------------------------------------------------------------------------------------------

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
        depths: the depth config it was cut at (recorded; ``pt`` needs it for ``open_run``).
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
    form = FORMATS[check_format(fmt)]
    path = Path(path).expanduser()
    model = model.eval()
    target = ExportTarget(model_name, num_classes, [int(d) for d in depths] if depths is not None else None,
                          input_size, config, extra)
    files = form.write(model, path, target)
    summary: dict[str, Any] = {"format": fmt, "files": [str(f) for f in files], "params": form.params(model),
                               "plain_architecture": plain_architecture_code(model, model_name, num_classes,
                                                                             target.model_kwargs)}
    if verify:
        summary.update(form.verify(model, path, target))
    return summary


def export_run(run: Run, depths: Sequence[int], output: str | Path, fmt: str, *, bn_images: int,
               input_size: int | None = None, data=None, evaluate_test: bool = False,
               metrics: dict | None = None, progress: bool = False) -> dict[str, Any]:
    """Cut ``depths`` out of an opened run, re-estimate its BN statistics, export it, write its summary JSON.

    Args:
        run: the opened training checkpoint (``stimulative.runs.open_run``).
        depths: the sub-network to export.
        output: the file to write (the summary goes to ``<output>.summary.json``).
        fmt: one of ``EXPORT_FORMATS``.
        bn_images: training images for the BN re-estimation (0: keep the trained statistics).
        input_size: input side for tracing/ONNX (default: the run's).
        data: the run's data (``run.data()``); loaded when BN re-estimation or ``evaluate_test`` needs it.
        evaluate_test: also measure the export's test accuracy (recorded as ``accuracy``).
        metrics: known test metrics of this sub-network (``acc``, ``loss``, ``n``) to record instead.
        progress: progress bars for the re-estimation and the evaluation.

    Returns:
        The summary (also written): depths, params vs the full network, BN images, normalisation, format
        details and the reload check.
    """
    from ..core.evaluation import evaluate

    check_format(fmt)
    depths = [int(d) for d in depths]
    ed, cfg, saved = run.ed, run.config, run.loaded.saved
    ed.block_modes(depths)  # validate before any data is loaded
    if data is None and (bn_images > 0 or evaluate_test):
        data = run.data()
    if data is not None:
        data.train.set_epoch(0)  # the same images as every other measurement of this run
    sub = extract_subnetwork(ed, depths, data.train if data is not None else None, bn_images, progress=progress)
    if evaluate_test:
        metrics = evaluate(sub, data.test, progress=progress)
    input_size = input_size or run.input_size
    mean, std = normalisation(cfg.data, data)
    extra = {"epoch": saved.epoch, "step": saved.step, "metrics": dict(metrics or {}),
             "best_acc": (metrics or {}).get("acc", saved.best_acc), "source_checkpoint": str(run.path),
             "bn_recal_images": bn_images, "mean": mean, "std": std, "starts": saved.starts}
    info = export_model(sub, output, fmt, model_name=cfg.model.name, num_classes=run.num_classes, depths=depths,
                        input_size=input_size, config=config_to_dict(cfg), extra=extra)
    summary = {"checkpoint": str(run.path), "output": str(output), "model": cfg.model.name, "depths": depths,
               "full_depths": ed.full_depths, "num_classes": run.num_classes, "blocks": ed.num_blocks(depths),
               "blocks_full": ed.num_blocks(), "params_full": count_parameters(run.model), "input_size": input_size,
               "bn_recal_images": bn_images, "mean": mean, "std": std, **info}
    if metrics:
        summary.update(accuracy=metrics.get("acc"), test_loss=metrics.get("loss"), test_images=metrics.get("n"))
    summary_path = Path(output).with_name(Path(output).name + ".summary.json")
    summary["summary"] = str(summary_path)
    write_json(summary, summary_path, indent=2)
    return summary
