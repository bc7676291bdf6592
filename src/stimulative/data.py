"""Data: datasets as in-memory uint8 tensors with batch-level augmentation, or DataLoaders for large images.

Interface used by the engine, the analyses and the exporters::

    bundle = build_data(cfg.data, batch_size=128, eval_batch_size=512, seed=0)
    for epoch in range(E):
        bundle.train.set_epoch(epoch)
        for x, y in bundle.train:     # float32 NCHW, normalised; int64 labels
            ...
    bundle.test, bundle.num_classes, bundle.input_size, bundle.classes

``TensorBatches`` keeps the whole dataset as a uint8 tensor and augments whole batches (pad-crop + flip) with
tensor ops, so a 2-core CPU is never waiting for per-image PIL work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import DataConfig
from .errors import DataError

__all__ = ["DataBundle", "TensorBatches", "build_data", "synthetic_dataset", "DataError", "DATASET_STATS"]

DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "default": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


class TensorBatches:
    """Batches from uint8 NCHW images held in memory.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        batch_size: per-process batch size.
        mean, std: per-channel normalisation (in [0, 1] units).
        train: shuffle every epoch (seeded by ``seed + epoch``) and augment; otherwise fixed order, no augmentation.
        augment: "cifar" (random crop with ``padding`` zero padding + horizontal flip) or "none".
        drop_last: drop the last incomplete batch (training).
        rank, world_size: shard the (shuffled) indices across DDP processes like ``DistributedSampler``.
        device: move batches there (augmentation then runs on that device).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std, *,
                 train: bool = False, augment: str = "none", padding: int = 4, seed: int = 0,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise DataError("the dataset is empty")
        if augment not in ("cifar", "none"):
            raise DataError(f"in-memory augmentation must be 'cifar' or 'none', got {augment!r}")
        self.images, self.labels = images, labels.long()
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.train, self.augment, self.padding, self.seed = train, augment, padding, seed
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if self.train:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:
            per = -(-n // self.world_size) if not self.drop_last else n // self.world_size
            total = per * self.world_size
            if total > n:
                idx = torch.cat([idx, idx[: total - n]])
            idx = idx[:total][self.rank::self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.padding
        if p > 0:
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
            rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
            cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)
            x = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device)
                       .view(1, -1, 1, 1), rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
        flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
        return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        g = torch.Generator().manual_seed(10_007 * (self.seed + 1) + self.epoch * 101 + self.rank)
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[sel].to(self.device, non_blocking=True)
            y = self.labels[sel].to(self.device, non_blocking=True)
            if self.train and self.augment == "cifar":
                x = self._augment(x, g)
            yield (x.float().div_(255) - mean) / std, y


@dataclass
class DataBundle:
    train: TensorBatches          # or any iterable of (x, y) with len() and set_epoch(epoch)
    test: TensorBatches
    num_classes: int
    input_size: int
    classes: list[str]


def synthetic_dataset(n: int, num_classes: int = 10, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable synthetic images: each class is a fixed random colour pattern plus noise (uint8 NCHW)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    x = protos[labels] + 0.25 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def build_data(cfg: DataConfig, batch_size: int, eval_batch_size: int, seed: int = 0, rank: int = 0,
               world_size: int = 1, device: torch.device | str = "cpu") -> DataBundle:
    """Build train/test batches for ``cfg`` (``batch_size`` is per process)."""
    if cfg.name == "synthetic":
        n_train = cfg.train_subset or 512
        n_test = cfg.test_subset or 256
        classes = [str(i) for i in range(10)]
        xtr, ytr = synthetic_dataset(n_train, 10, cfg.input_size, seed=1234)
        xte, yte = synthetic_dataset(n_test, 10, cfg.input_size, seed=5678)
        mean, std = cfg.mean or DATASET_STATS["default"][0], cfg.std or DATASET_STATS["default"][1]
    else:
        raise DataError(f"data.name={cfg.name!r} is not implemented yet")
    train = TensorBatches(xtr, ytr, batch_size, mean, std, train=True, augment=cfg.augment if cfg.augment != "imagenet"
                          else "none", padding=cfg.padding, seed=seed, rank=rank, world_size=world_size, device=device)
    test = TensorBatches(xte, yte, eval_batch_size, mean, std, train=False, device=device)
    return DataBundle(train, test, len(classes), cfg.input_size, classes)
