"""The ``data`` section of a run's config: which dataset, where it is, how it is read and augmented.

It lives with the data layer that reads it (``build_data(cfg.data, ...)``); ``stimulative.train.config`` builds
it from recipes and ``key=value`` overrides (``data.root=...``) and re-exports it as
``stimulative.train.config.DataConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    """Where the images are and how they are served (the recipe's ``data:`` section)."""

    name: str = "cifar10"                 # cifar10 | cifar100 | folder | synthetic | digits
    root: str = "./data"                  # dataset dir, ImageFolder dir, or .tar/.tar.gz/.tar.xz/.zip archive
    download: bool = False                # torchvision download for cifar10/cifar100
    train_subset: int = 0                 # use the first N (stratified by seed) training images; 0 = all
    test_subset: int = 0
    input_size: int = 32                  # train crop / image size fed to the model
    val_resize: int = 0                   # ImageNet pipeline: resize before center crop (0 = input_size/0.875)
    val_crop: int = 0                     # ImageNet pipeline: center crop (0 = input_size)
    augment: str = "cifar"                # cifar (pad-crop+flip on tensors) | imagenet | none
    padding: int = 4
    color_jitter: float = 0.4
    lighting: float = 0.1
    uniform_augment: bool = False
    in_memory: bool = True                # small-image datasets held as uint8 tensors
    cache: bool = True                    # cache decoded small-image folders/archives (false: decode every run)
    cache_dir: str | None = None          # where (default: $XDG_CACHE_HOME/stimulative or ~/.cache/stimulative)
    workers: int = 4
    strict: bool = False                  # unreadable images: error (true) or skip with a warning (false)
    mean: list | None = None              # per-channel normalisation; None = dataset default
    std: list | None = None
