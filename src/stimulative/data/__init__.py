"""Data: datasets as in-memory uint8 tensors with batch-level augmentation, or DataLoaders for large images.

* ``config``: ``DataConfig``, the ``data`` section of a run's config (``stimulative.train.config`` builds it).
* ``datasets``: ``build_data(cfg.data, ...)`` -> ``DataBundle`` (train/test batches, classes, input size).
* ``archives``: ImageFolder directories and archives; decoded once into a cache file (``stimulative.io``).
* ``transforms``: the per-image ImageNet pipeline (crop, flip, jitter, lighting, UniformAugment).

The package imports nothing above ``stimulative.io``.
"""

from .archives import DataError
from .config import DataConfig
from .datasets import (
    DATASET_STATS,
    DataBundle,
    LoaderBatches,
    TensorBatches,
    build_data,
    collate_skipping,
    data_fingerprint,
    digits_dataset,
    normalisation,
    stratified_subset,
    synthetic_dataset,
)

__all__ = [
    "DATASET_STATS", "DataBundle", "DataConfig", "DataError", "LoaderBatches", "TensorBatches", "build_data",
    "collate_skipping", "data_fingerprint", "digits_dataset", "normalisation", "stratified_subset", "synthetic_dataset",
]
