"""Data: datasets as in-memory uint8 tensors with batch-level augmentation, or DataLoaders for large images.

Interface used by the engine, the analyses and the exporters::

    bundle = build_data(cfg.data, batch_size=128, eval_batch_size=512, seed=0)
    for epoch in range(E):
        bundle.train.set_epoch(epoch)
        for x, y in bundle.train:     # float32 NCHW, normalised; int64 labels
            ...
    bundle.test, bundle.num_classes, bundle.input_size, bundle.classes

Datasets (``data.name``):

* ``cifar10`` / ``cifar100``: ``torchvision.datasets.CIFAR10/100(data.root, download=data.download)``; or, when
  ``data.root`` is an archive (.tar/.tar.gz/.tgz/.tar.xz/.zip) or an ImageFolder directory with ``train/`` and
  ``test/`` (or ``val/``) splits, that instead.
* ``folder``: any ImageFolder directory or archive with those splits (classes sorted by name).
* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no download), upsampled to ``data.input_size``,
  RGB, a fixed seeded stratified 80/20 train/test split.
* ``synthetic``: tiny learnable images generated in memory (tests).

Small images (<= 64 px with ``data.in_memory``: the median of up to 16 images spread over the dataset, read from
their headers) are decoded once, each resized on its own to ``data.input_size``
(at most 64 px), into a cached uint8 tensor file (``data.cache``, ``data.cache_dir``) and served by
``TensorBatches``, which augments whole batches (pad-crop + flip) with tensor ops, so a 2-core CPU is never
waiting for per-image PIL work. Large images go through a multi-worker ``DataLoader`` (``LoaderBatches``) with
the paper's ImageNet pipeline (``data.augment=imagenet``, see ``stimulative.data.transforms``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from .archives import (
    SMALL_IMAGE_MAX,
    DataError,
    FileImageDataset,
    ImageSource,
    TensorImageDataset,
    cache_path,
    is_archive,
    load_decoded,
    looks_like_image_folder,
)
from .config import DataConfig
from .transforms import eval_transform, imagenet_train_transform, resize_train_transform

__all__ = [
    "DataBundle", "TensorBatches", "LoaderBatches", "build_data", "synthetic_dataset", "digits_dataset",
    "stratified_subset", "collate_skipping", "normalisation", "DataError", "DATASET_STATS", "DataConfig",
    "data_fingerprint",
]

DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),     # natural photos: ImageNet statistics
    "digits": ((0.3053, 0.3053, 0.3053), (0.3759, 0.3759, 0.3759)),
    "default": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
DIGITS_SPLIT_SEED = 0   # the digits train/test split is fixed, independent of the run seed


class Batches(Protocol):
    """What ``DataBundle.train`` / ``.test`` provide."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


class TensorBatches:
    """Batches from uint8 NCHW images held in memory.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        batch_size: per-process batch size.
        mean, std: per-channel normalisation (in [0, 1] units).
        train: shuffle every epoch (seeded by ``seed + epoch``) and augment; otherwise fixed order, no augmentation.
        augment: "cifar" (random crop with ``padding`` zero padding + horizontal flip) or "none".
        padding: pad-crop padding in pixels (0 = no crop).
        flip: random horizontal flips with augment="cifar" (off for digits).
        seed: shuffling and augmentation seed.
        drop_last: drop the last incomplete batch (default: when training).
        rank, world_size: shard the (shuffled) indices across DDP processes like ``DistributedSampler``.
        device: move batches there (augmentation then runs on that device).

    Example::

        x, y = synthetic_dataset(256)
        batches = TensorBatches(x, y, 64, (0.5,) * 3, (0.25,) * 3, train=True, augment="cifar")
        xb, yb = next(iter(batches))      # float32 (64, 3, 32, 32), int64 (64,)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std, *,
                 train: bool = False, augment: str = "none", padding: int = 4, flip: bool = True, seed: int = 0,
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
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.images, self.labels = images, labels.long()
        self.batch_size = batch_size
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.mean, self.std = mean_t, std_t
        # (x / 255 - mean) / std == x * scale - shift, one fused op per batch
        self._scale, self._shift = 1.0 / (255.0 * std_t), mean_t / std_t
        self.train, self.augment, self.padding, self.flip, self.seed = train, augment, padding, flip, seed
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle order and augmentation draws (same epoch -> same batches)."""
        self.epoch = epoch

    def _per_rank(self) -> int:
        n = len(self.images)
        if self.world_size == 1:
            return n
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if self.train:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # as DistributedSampler: pad by wrapping (or truncate), then stride by rank
            total = self._per_rank() * self.world_size
            if total > n:
                idx = torch.cat([idx, idx[: total - n]])
            idx = idx[:total][self.rank::self.world_size]
        return idx

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random pad-crop and horizontal flip of a whole batch as one gather."""
        n, c, h, w = x.shape
        p = self.padding
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=g)
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=g)
        flip = torch.rand(n, 1, generator=g) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        if p == 0 and not bool(flip.any()):
            return x
        cols = torch.arange(w).expand(n, w)
        cols = torch.where(flip, cols.flip(1), cols) + dx                # (n, w) source column in the padded image
        rows = torch.arange(h).expand(n, h) + dy                          # (n, h)
        width = w + 2 * p
        flat = (rows.view(n, h, 1) * width + cols.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
        padded = F.pad(x, (p, p, p, p)) if p > 0 else x
        return padded.reshape(n, c, -1).gather(2, flat.to(x.device)).view(n, c, h, w)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        g = torch.Generator().manual_seed(10_007 * (self.seed + 1) + self.epoch * 101 + self.rank)
        scale, shift = self._scale.to(self.device), self._shift.to(self.device)
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[sel].to(self.device, non_blocking=True)
            y = self.labels[sel].to(self.device, non_blocking=True)
            if self.train and self.augment == "cifar":
                x = self._augment(x, g)
            yield torch.addcmul(-shift, x.float(), scale), y


def collate_skipping(samples: list[tuple[Any, Any]]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """Collate ``(tensor, label)`` samples, setting aside unreadable ones (``(None, "name (error)")``).

    Returns:
        (images or None, labels or None, names of the unreadable samples).
    """
    good = [s for s in samples if s[0] is not None]
    bad = [str(s[1]) for s in samples if s[0] is None]
    if not good:
        return None, None, bad
    return torch.stack([s[0] for s in good]), torch.tensor([int(s[1]) for s in good], dtype=torch.int64), bad


class LoaderBatches:
    """Batches from a multi-worker ``DataLoader`` (per-image transforms), with the ``TensorBatches`` interface.

    Training shuffles with a generator reseeded by ``seed + epoch`` (or a ``DistributedSampler`` when
    ``world_size > 1``); workers persist across epochs and pin memory for CUDA. Unreadable images are dropped from
    their batch and counted in one warning per pass (first pass with any), or raise ``DataError`` naming the file
    when ``strict``.

    Args:
        dataset: yields ``(tensor, label)`` or ``(None, "name (error)")``.
        batch_size: per-process batch size.
        train: shuffle, shard across ranks and drop the last incomplete batch.
        seed: shuffling seed (worker augmentation seeds derive from it too).
        rank, world_size: DDP position.
        workers: DataLoader worker processes (0 = load in this process).
        device: move batches there.
        strict: raise on unreadable images.
        mean, std: the normalisation the dataset's transform applies (kept as ``.mean``/``.std`` (1, 3, 1, 1)
            tensors for exporters, like ``TensorBatches``); not applied here.

    Example::

        batches = LoaderBatches(dataset, 64, train=True, workers=2)
        batches.set_epoch(3)
        for x, y in batches: ...
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0, device: torch.device | str = "cpu", strict: bool = False,
                 mean: Sequence[float] = DATASET_STATS["default"][0], std: Sequence[float] = DATASET_STATS["default"][1]):
        self.dataset, self.train, self.seed, self.strict = dataset, train, seed, strict
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.device = torch.device(device)
        self._order = torch.Generator()
        self.sampler: Any
        if train and world_size > 1:
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                              drop_last=True)
        elif train:
            self.sampler = RandomSampler(dataset, generator=self._order)
        else:
            self.sampler = SequentialSampler(dataset)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate_skipping, pin_memory=self.device.type == "cuda",
                                 drop_last=train, persistent_workers=workers > 0,
                                 generator=torch.Generator().manual_seed(seed))
        self._warned = False
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle order."""
        self.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        self._order.manual_seed(self.seed + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skipped: list[str] = []
        for x, y, bad in self.loader:
            if bad:
                if self.strict:
                    raise DataError(f"cannot read image {bad[0]}")
                skipped.extend(bad)
            if x is None:
                continue
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if skipped and not self._warned:
            self._warned = True
            warnings.warn(f"skipped {len(skipped)} unreadable image(s) (first: {skipped[0]}); "
                          f"set data.strict=true to stop on them", stacklevel=2)


@dataclass
class DataBundle:
    train: Batches          # TensorBatches or LoaderBatches: iterable of (x, y) with len() and set_epoch(epoch)
    test: Batches
    num_classes: int
    input_size: int
    classes: list[str]


def synthetic_dataset(n: int, num_classes: int = 10, size: int = 32, seed: int = 0,
                      sample_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable synthetic images: each class is a fixed random colour pattern plus noise (uint8 NCHW).

    ``seed`` fixes the class patterns; ``sample_seed`` (default: ``seed``) the labels and noise, so a train and
    a test split share their classes when they share ``seed`` and differ in ``sample_seed``.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    if sample_seed is not None:
        g = torch.Generator().manual_seed(sample_seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    x = protos[labels] + 0.25 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def digits_dataset(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 handwritten digits as uint8 RGB (N, 3, size, size) images (bilinear upsampling)
    and int64 labels. No download: the data ships with scikit-learn.

    Example::

        x, y = digits_dataset(16)    # (1797, 3, 16, 16) uint8, (1797,) int64
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data.name=digits needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(digits.target).long()


def stratified_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n`` samples drawn per class in proportion to the class sizes (largest remainders get
    the leftover places), seeded: the same ``seed`` gives the same subset. ``n <= 0`` or ``n >= len`` = all.

    Example::

        idx = stratified_subset(torch.tensor([0, 0, 0, 0, 1, 1]), 3, seed=0)   # two 0s and one 1
    """
    total = len(labels)
    if n <= 0 or n >= total:
        return torch.arange(total)
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * n / total
    take = quota.floor().long()
    leftover = int(n - take.sum())
    take[torch.argsort(-(quota - take), stable=True)[:leftover]] += 1
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, k in zip(classes.tolist(), take.tolist()):
        members = (labels == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def _fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 NCHW images (shorter side -> ``size``, antialiased) and center-crop to ``size`` x ``size``."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        out.append(x[..., top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def normalisation(cfg: DataConfig, bundle: DataBundle | None = None) -> tuple[list[float], list[float]]:
    """The per-channel mean and std the model's inputs were normalised with (recorded with an export).

    Taken from the built data when given (exact), else from ``cfg.mean``/``cfg.std`` or the dataset's defaults.
    """
    test = getattr(bundle, "test", None)
    if test is not None and hasattr(test, "mean") and hasattr(test, "std"):
        return [round(float(v), 6) for v in test.mean.flatten()], [round(float(v), 6) for v in test.std.flatten()]
    mean, std = DATASET_STATS.get(cfg.name, DATASET_STATS["default"])
    return list(cfg.mean or mean), list(cfg.std or std)


def _stats(cfg: DataConfig, key: str) -> tuple[Sequence[float], Sequence[float]]:
    mean = cfg.mean or DATASET_STATS[key][0]
    std = cfg.std or DATASET_STATS[key][1]
    if len(mean) != 3 or len(std) != 3:
        raise DataError(f"data.mean and data.std need 3 values (RGB), got {list(mean)} and {list(std)}")
    if any(s <= 0 for s in std):
        raise DataError(f"data.std must be positive, got {list(std)}")
    return mean, std


@dataclass
class _Common:
    """The build_data arguments every dataset path needs."""

    cfg: DataConfig
    batch_size: int
    eval_batch_size: int
    seed: int
    rank: int
    world_size: int
    device: torch.device | str


def _memory_bundle(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, classes: list[str],
                   stats: tuple, c: _Common, flip: bool = True) -> DataBundle:
    cfg = c.cfg
    if cfg.train_subset:
        keep = stratified_subset(ytr, cfg.train_subset, c.seed)
        xtr, ytr = xtr[keep], ytr[keep]
    if cfg.test_subset:
        keep = stratified_subset(yte, cfg.test_subset, c.seed)
        xte, yte = xte[keep], yte[keep]
    mean, std = stats
    if cfg.augment == "imagenet":
        train_tf = imagenet_train_transform(cfg.input_size, cfg.color_jitter, cfg.lighting, cfg.uniform_augment,
                                            mean, std)
        return _loader_bundle(TensorImageDataset(xtr, ytr, train_tf),
                              TensorImageDataset(xte, yte, _eval_tf(cfg, mean, std)), classes, (mean, std), c)
    xtr, xte = _fit_size(xtr, cfg.input_size), _fit_size(xte, cfg.input_size)
    train = TensorBatches(xtr, ytr, c.batch_size, mean, std, train=True, augment=cfg.augment, padding=cfg.padding,
                          flip=flip, seed=c.seed, rank=c.rank, world_size=c.world_size, device=c.device)
    test = TensorBatches(xte, yte, c.eval_batch_size, mean, std, train=False, device=c.device)
    return DataBundle(train, test, len(classes), cfg.input_size, classes)


def _eval_tf(cfg: DataConfig, mean, std):
    if cfg.augment == "imagenet":
        resize = cfg.val_resize or round(cfg.input_size / 0.875)
    else:
        resize = cfg.val_resize or cfg.input_size
    return eval_transform(resize, cfg.val_crop or cfg.input_size, mean, std)


def _loader_bundle(train_ds: Dataset, test_ds: Dataset, classes: list[str], stats: tuple, c: _Common) -> DataBundle:
    workers = max(0, c.cfg.workers)
    mean, std = stats
    train = LoaderBatches(train_ds, c.batch_size, train=True, seed=c.seed, rank=c.rank, world_size=c.world_size,
                          workers=workers, device=c.device, strict=c.cfg.strict, mean=mean, std=std)
    test = LoaderBatches(test_ds, c.eval_batch_size, train=False, seed=c.seed, workers=workers, device=c.device,
                         strict=c.cfg.strict, mean=mean, std=std)
    return DataBundle(train, test, len(classes), c.cfg.input_size, classes)


def _check_classes(name: str, root: Path, classes: list[str]) -> None:
    expected = {"cifar10": 10, "cifar100": 100}.get(name)
    if expected is not None and len(classes) != expected:
        raise DataError(f"data.name={name} expects {expected} classes but {str(root)!r} has {len(classes)}; "
                        f"use data.name=folder for other datasets")


def _files_bundle(name: str, stats_key: str, c: _Common) -> DataBundle:
    cfg = c.cfg
    source = ImageSource(cfg.root)
    mean, std = _stats(cfg, stats_key)
    if cfg.in_memory:
        # small images are decoded once, each resized on its own to the input size (at most SMALL_IMAGE_MAX px:
        # a larger input size is reached per batch), and cached; "small" is the median of 16 images spread over
        # the source (their headers only), so a thumbnail in front does not pull a folder of photos into memory
        size = min(cfg.input_size, SMALL_IMAGE_MAX)
        cached = cfg.cache and source.kind != "folder" and cache_path(source, cfg.cache_dir, size).is_file()
        probe = None if cached else source.probe_size()
        if cached or probe is None or max(probe) <= SMALL_IMAGE_MAX:
            workers = max(1, min(cfg.workers, os.cpu_count() or 1))
            decoded = load_decoded(source, cfg.cache_dir, workers=workers, strict=cfg.strict, rank=c.rank,
                                   world_size=c.world_size, size=size, cache=cfg.cache)
            _check_classes(name, source.root, decoded.classes)
            return _memory_bundle(decoded.train_images, decoded.train_labels, decoded.test_images,
                                  decoded.test_labels, decoded.classes, (mean, std), c)
    index = source.index()
    _check_classes(name, source.root, index.classes)
    train_items, test_items = index.train, index.test
    if cfg.train_subset:
        keep = stratified_subset(torch.tensor([lab for _, lab in train_items]), cfg.train_subset, c.seed)
        train_items = [train_items[i] for i in keep.tolist()]
    if cfg.test_subset:
        keep = stratified_subset(torch.tensor([lab for _, lab in test_items]), cfg.test_subset, c.seed)
        test_items = [test_items[i] for i in keep.tolist()]
    if cfg.augment == "imagenet":
        train_tf = imagenet_train_transform(cfg.input_size, cfg.color_jitter, cfg.lighting, cfg.uniform_augment,
                                            mean, std)
    else:
        train_tf = resize_train_transform(cfg.input_size, cfg.augment, cfg.padding, mean, std)
    return _loader_bundle(FileImageDataset(source, train_items, train_tf, index.names),
                          FileImageDataset(source, test_items, _eval_tf(cfg, mean, std), index.names),
                          index.classes, (mean, std), c)


def _torchvision_cifar(name: str, cfg: DataConfig) -> tuple:
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_cls = CIFAR10 if name == "cifar10" else CIFAR100
    root = Path(cfg.root).expanduser()
    try:
        train = dataset_cls(str(root), train=True, download=cfg.download)
        test = dataset_cls(str(root), train=False, download=cfg.download)
    except RuntimeError as err:
        if cfg.download:
            raise DataError(f"{name} in {str(root)!r} is unreadable after download: {err}") from None
        raise DataError(f"{name} not found in {str(root)!r} (looked for {dataset_cls.base_folder}/): pass "
                        f"data.download=true to download it there, or set data.root to the directory holding "
                        f"{dataset_cls.base_folder}/, an ImageFolder directory or an archive") from None
    except OSError as err:   # includes urllib's URLError (no network)
        raise DataError(f"downloading {name} to {str(root)!r} failed: {err}") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets).long()

    return (*tensors(train), *tensors(test), list(train.classes))


_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}   # torchvision's layout
_fingerprints: dict[tuple[str, str], dict[str, Any] | None] = {}


def data_fingerprint(name: str, root: str, refresh: bool = False) -> dict[str, Any] | None:
    """A cheap identity of the training data of ``data.name``/``data.root``, recorded in training checkpoints so
    that a resume on other data is refused (``train.resume.check_same_data``).

    ``{"kind", "files", "bytes"}``: an ImageFolder's ``train/`` images (count and total size), an archive's size,
    or torchvision's CIFAR batch files; no contents are read and modification times are left out (a moved or
    copied dataset is the same). None for generated data (``synthetic``, ``digits``) and for a root that does
    not exist (``build_data`` reports that). Remembered per (name, resolved root) within the process;
    ``refresh=True`` reads it again (a run does at its start).
    """
    if name not in _CIFAR_FOLDERS and name != "folder":
        return None
    path = Path(root).expanduser()
    key = (name, str(path.resolve()))
    if refresh or key not in _fingerprints:
        _fingerprints[key] = _read_fingerprint(name, path)
    found = _fingerprints[key]
    return dict(found) if found is not None else None


def _read_fingerprint(name: str, path: Path) -> dict[str, Any] | None:
    try:
        if name in _CIFAR_FOLDERS and not (is_archive(path) or looks_like_image_folder(path)):
            folder = path / _CIFAR_FOLDERS[name]
            if not folder.is_dir():
                return None
            sizes = [p.stat().st_size for p in folder.iterdir() if p.is_file()]
            return {"kind": "cifar", "files": len(sizes), "bytes": sum(sizes)}
        source = ImageSource(path)
        return {"kind": "archive" if source.kind != "folder" else "folder", **source.train_files()}
    except (DataError, OSError):
        return None


def build_data(cfg: DataConfig, batch_size: int, eval_batch_size: int, seed: int = 0, rank: int = 0,
               world_size: int = 1, device: torch.device | str = "cpu") -> DataBundle:
    """Build train/test batches for ``cfg`` (``batch_size`` is per process; the test set is not sharded).

    Args:
        cfg: the ``data`` section of the config.
        batch_size, eval_batch_size: per-process batch sizes.
        seed: shuffling, augmentation and subset seed.
        rank, world_size: DDP position (training batches are sharded like ``DistributedSampler``).
        device: where batches are delivered.

    Raises:
        DataError: unknown dataset, missing path, empty or unreadable dataset (one line naming the problem).

    Example::

        from stimulative.data import DataConfig
        bundle = build_data(DataConfig(name="digits", input_size=16, augment="none"), 64, 256)
        bundle.num_classes, len(bundle.train)     # (10, 22)
    """
    c = _Common(cfg, batch_size, eval_batch_size, seed, rank, world_size, device)
    name = cfg.name
    if name == "synthetic":
        n_train = cfg.train_subset or 512
        n_test = cfg.test_subset or 256
        classes = [str(i) for i in range(10)]
        xtr, ytr = synthetic_dataset(n_train, 10, cfg.input_size, seed=1234, sample_seed=1)
        # same class patterns as the training split (seed), different images (sample_seed)
        xte, yte = synthetic_dataset(n_test, 10, cfg.input_size, seed=1234, sample_seed=2)
        synthetic_cfg = _Common(_without_subsets(cfg), batch_size, eval_batch_size, seed, rank, world_size, device)
        return _memory_bundle(xtr, ytr, xte, yte, classes, _stats(cfg, "default"), synthetic_cfg)
    if name == "digits":
        x, y = digits_dataset(cfg.input_size)
        test_idx = stratified_subset(y, round(0.2 * len(y)), DIGITS_SPLIT_SEED)
        is_test = torch.zeros(len(y), dtype=torch.bool)
        is_test[test_idx] = True
        return _memory_bundle(x[~is_test], y[~is_test], x[is_test], y[is_test], [str(i) for i in range(10)],
                              _stats(cfg, "digits"), c, flip=False)
    if name in ("cifar10", "cifar100"):
        root = Path(cfg.root).expanduser()
        if is_archive(root) or looks_like_image_folder(root):
            return _files_bundle(name, name, c)
        xtr, ytr, xte, yte, classes = _torchvision_cifar(name, cfg)
        return _memory_bundle(xtr, ytr, xte, yte, classes, _stats(cfg, name), c)
    if name == "folder":
        return _files_bundle(name, "folder", c)
    raise DataError(f"unknown data.name={name!r}; choose cifar10, cifar100, folder, digits or synthetic")


def _without_subsets(cfg: DataConfig) -> DataConfig:
    # synthetic data uses train_subset/test_subset as the generated sizes, not as subsets
    return replace(cfg, train_subset=0, test_subset=0)
