"""The model of a run: ``build_model(cfg, num_classes)`` builds what ``cfg.model`` describes, ``elastic(model, cfg)``
wraps it in ``ElasticDepth`` with the recipe's stages.

Training (``engine.train``), loading a checkpoint (``checkpoint.load_model``) and the tests build models here, so a
recipe's model is the same everywhere; the families themselves are ``stimulative.models``'s registry.

Example::

    cfg = load_config(None, ["model.name=cifar_resnet20"])
    ed = elastic(build_model(cfg, num_classes=10), cfg)
"""

from __future__ import annotations

from torch import nn

from ..core.elastic import ElasticDepth
from ..models import create_model
from .config import Config, ConfigError

__all__ = ["build_model", "elastic"]


def build_model(cfg: Config, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The model described by ``cfg.model`` (no checkpoint weights; ``pretrained`` loads the library's own)."""
    kwargs = dict(cfg.model.kwargs)
    return create_model(cfg.model.name, num_classes=num_classes, pretrained=pretrained, **kwargs)


def elastic(model: nn.Module, cfg: Config) -> ElasticDepth:
    """``ElasticDepth`` of the model of ``cfg`` (stages from ``model.stages``); a model without residual stages is
    a ``ConfigError`` that names the recipe key."""
    try:
        return ElasticDepth(model, stages=cfg.model.stages)
    except ValueError as err:
        if "no residual stage" not in str(err):
            raise
        raise ConfigError(f"model {cfg.model.name!r} has no residual stage with a skippable block (a stage of at "
                          "least 2 blocks where a block after the first has an identity shortcut); name its stages "
                          "with the recipe key model.stages, e.g. model.stages=[layer1,layer2,layer3]") from None
