"""Shared fixtures for the core tests: one table of supported model families.

Every family knows, independently of ``ElasticDepth``:
  * how to build the model (``build()``),
  * how to cut a depth configuration out of a copy BY HAND (``truncate(model, depths)``),
  * how to build the same architecture with fewer blocks (``build_with(depths)``, for strict state_dict loads),
  * its blocks per stage and a few depth configurations worth testing.

Building torchvision/timm ResNet-18 costs seconds (weight init of 11M parameters), so pristine models are built
once per session and every test gets a deep copy.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import stimulative as st
from stimulative.core.elastic import BRANCH, RUN
from stimulative.models import CifarResNet

NUM_CLASSES = 10

# The models here are tiny: one intra-op thread is as fast, and on a busy shared CPU several OpenMP threads
# per process spin against each other (measured: 100x slower forwards with 2 threads under load).
torch.set_num_threads(1)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    timm ResNets zero-init the last BN of each block (blocks are identities at init, so skipping them would not
    change the output and truncation tests could not fail); random statistics also make eval mode meaningful.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


# ------------------------------------------------------------------------------------------------------------
# Hand truncation (deliberately NOT using ElasticDepth / find_stages)
# ------------------------------------------------------------------------------------------------------------

def truncate_layers(model: nn.Module, depths: list[int]) -> nn.Module:
    """ResNets (ours, torchvision, timm): keep the first d_i blocks of ``layer{i+1}``."""
    for i, d in enumerate(depths):
        name = f"layer{i + 1}"
        setattr(model, name, nn.Sequential(*list(getattr(model, name).children())[:d]))
    return model


# torchvision mobilenet_v3_small: features[0] = stem, features[1..11] = inverted residuals, features[12] = last conv.
# Blocks with a residual connection (stride 1, in == out): 3, 5, 6, 8, 10, 11; so the stages (a shape-changing
# block followed by residual blocks) are these, written out from torchvision's config table:
MOBILENET_V3_SMALL_STAGES = [[2, 3], [4, 5, 6], [7, 8], [9, 10, 11]]


def hand_forward_cifar(model, modes, x):
    """CifarResNet forward written out, applying per-block modes by hand: RUN f(x), SKIP x, BRANCH f(x) - x.

    ``modes`` is a list (per stage) of per-block modes, or an ordered config of ints (first d_i blocks run).
    """
    modes = [[RUN] * d + [0] * (len(getattr(model, f"layer{i + 1}")) - d) if isinstance(d, int) else d
             for i, d in enumerate(modes)]
    h = F.relu(model.bn1(model.conv1(x)))
    for i, row in enumerate(modes):
        for block, mode in zip(getattr(model, f"layer{i + 1}"), row):
            if mode == RUN:
                h = block(h)
            elif mode == BRANCH:
                h = block(h) - h
    return model.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def truncate_mobilenet_v3_small(model: nn.Module, depths: list[int]) -> nn.Module:
    dropped = {i for stage, d in zip(MOBILENET_V3_SMALL_STAGES, depths) for i in stage[d:]}
    model.features = nn.Sequential(*[m for i, m in enumerate(model.features) if i not in dropped])
    return model


def truncate_vit(model: nn.Module, depths: list[int]) -> nn.Module:
    model.blocks = nn.Sequential(*list(model.blocks)[: depths[0]])
    return model


def build_mobilenet_v3_small_with(depths: list[int]) -> nn.Module:
    from torchvision.models import mobilenetv3

    setting, last_channel = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small")
    # setting[j] is features[j + 1]
    dropped = {i - 1 for stage, d in zip(MOBILENET_V3_SMALL_STAGES, depths) for i in stage[d:]}
    kept = [c for j, c in enumerate(setting) if j not in dropped]
    return mobilenetv3.MobileNetV3(kept, last_channel, num_classes=NUM_CLASSES)


def build_tv_resnet18_with(depths: list[int]) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, depths, num_classes=NUM_CLASSES)


def build_timm_resnet18_with(depths: list[int]) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(block=BasicBlock, layers=depths, num_classes=NUM_CLASSES)


VIT_KWARGS = dict(img_size=32, patch_size=8, depth=4)


def build_vit_with(depths: list[int]) -> nn.Module:
    kw = dict(VIT_KWARGS, depth=depths[0])
    return st.create_model("timm/vit_tiny_patch16_224", num_classes=NUM_CLASSES, **kw)


@dataclass
class Family:
    id: str
    name: str
    kwargs: dict
    full_depths: list[int]
    configs: list[list[int]]                       # non-full ordered configs to test
    truncate: Callable[[nn.Module, list[int]], nn.Module]
    build_with: Callable[[list[int]], nn.Module]
    input_size: int = 32
    extra: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        return st.create_model(self.name, num_classes=NUM_CLASSES, **self.kwargs)


FAMILIES = [
    Family("cifar_resnet20", "cifar_resnet20", {}, [3, 3, 3], [[1, 1, 1], [2, 3, 1], [3, 1, 2]], truncate_layers,
           lambda d: CifarResNet(d, num_classes=NUM_CLASSES)),
    Family("cifar_resnet_tiny", "cifar_resnet_tiny", {}, [2, 2, 2], [[1, 1, 1], [2, 1, 2]], truncate_layers,
           lambda d: CifarResNet(d, num_classes=NUM_CLASSES, widths=(8, 16, 32))),
    Family("cifar_resnet_tiny_B", "cifar_resnet_tiny", {"shortcut": "B"}, [2, 2, 2], [[1, 1, 1], [1, 2, 1]],
           truncate_layers, lambda d: CifarResNet(d, num_classes=NUM_CLASSES, widths=(8, 16, 32), shortcut="B")),
    Family("tv_resnet18", "resnet18", {}, [2, 2, 2, 2], [[1, 1, 1, 1], [2, 1, 2, 1]], truncate_layers,
           build_tv_resnet18_with),
    Family("tv_mobilenet_v3_small", "mobilenet_v3_small", {}, [2, 3, 2, 3], [[1, 1, 1, 1], [2, 2, 1, 3]],
           truncate_mobilenet_v3_small, build_mobilenet_v3_small_with),
    Family("timm_resnet18", "timm/resnet18", {}, [2, 2, 2, 2], [[1, 1, 1, 1], [1, 2, 1, 2]], truncate_layers,
           build_timm_resnet18_with),
    Family("timm_vit_tiny", "timm/vit_tiny_patch16_224", VIT_KWARGS, [4], [[1], [3]], truncate_vit, build_vit_with),
]


@functools.cache
def _pristine(family_id: str) -> nn.Module:
    fam = next(f for f in FAMILIES if f.id == family_id)
    torch.manual_seed(0)
    return randomize_bn(fam.build(), seed=1)


def fresh_model(family: Family) -> nn.Module:
    """A deep copy of the family's (session-cached) model, in eval mode."""
    return copy.deepcopy(_pristine(family.id)).eval()


@pytest.fixture(params=FAMILIES, ids=[f.id for f in FAMILIES])
def family(request) -> Family:
    return request.param


@pytest.fixture
def tiny():
    """A fresh cifar_resnet_tiny and its ElasticDepth (train mode)."""
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES)
    return model, st.ElasticDepth(model)


def batch(n: int = 4, size: int = 32, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, y


def groupnorm_tiny() -> nn.Module:
    """cifar_resnet_tiny (seed 0) with GroupNorm(2, C) for every BatchNorm2d, in train mode.

    GroupNorm is per-sample, so two half batches give the same gradients as the whole batch: the model of the
    distributed-equality tests (same init on every rank).
    """
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet_tiny", num_classes=NUM_CLASSES)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                gn = nn.GroupNorm(2, child.num_features)
                with torch.no_grad():
                    gn.weight.uniform_(0.5, 1.5)
                    gn.bias.normal_(0, 0.1)
                setattr(module, name, gn)
    return model.train()

