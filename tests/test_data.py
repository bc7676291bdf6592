"""Data layer: folders and archives, the decode cache, corrupt files, subsets, digits, batch augmentation,
DDP sharding and the ImageNet DataLoader pipeline. Only tiny generated files (tmp_path)."""

from __future__ import annotations

import pickle
import tarfile
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stimulative.data.archives as data_files
from stimulative.data import (
    DATASET_STATS,
    DataError,
    LoaderBatches,
    TensorBatches,
    build_data,
    stratified_subset,
    synthetic_dataset,
)
from stimulative.data.transforms import (
    UNIFORM_AUGMENT_OPS,
    Lighting,
    UniformAugment,
    imagenet_train_transform,
)
from stimulative.train.config import DataConfig

COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}   # one colour per class


def make_folder(root: Path, size: int = 8, per_class: dict | None = None, test_name: str = "test",
                fmt: str = "png") -> Path:
    """root/{train,test}/<class>/<i>.<fmt>: solid class colours with a pixel marking the image index."""
    per_class = per_class or {"train": 4, test_name: 2}
    for split, n in per_class.items():
        for cls, color in COLORS.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.full((size, size, 3), color, dtype=np.uint8)
                arr[0, 0] = (i * 20 % 256,) * 3
                Image.fromarray(arr).save(d / f"{i}.{fmt}")
    return root


def make_archive(folder: Path, out: Path) -> Path:
    """Pack ``folder`` (as a single top-level directory) into a tar/tar.gz/tar.xz/zip archive."""
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    else:
        mode = {".tar": "w", ".gz": "w:gz", ".xz": "w:xz"}[out.suffix]
        with tarfile.open(out, mode) as tf:
            tf.add(folder, arcname=folder.name)
    return out


def cfg_for(root: Path, cache: Path, **kw) -> DataConfig:
    base = dict(name="folder", root=str(root), cache_dir=str(cache), augment="none", input_size=8, workers=1)
    base.update(kw)
    return DataConfig(**base)


def unnormalise(x: torch.Tensor, stats: str = "imagenet") -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DATASET_STATS[stats])
    return ((x * std + mean) * 255).round()


def all_batches(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(batches))
    return torch.cat(xs), torch.cat(ys)


# --- folders and archives --------------------------------------------------------------------------------------

def test_folder_loads_with_sorted_classes_and_right_labels(tmp_path):
    root = make_folder(tmp_path / "ds")
    bundle = build_data(cfg_for(root, tmp_path / "cache"), batch_size=4, eval_batch_size=100)
    assert bundle.classes == ["cat", "dog", "emu"] and bundle.num_classes == 3
    assert isinstance(bundle.train, TensorBatches) and len(bundle.train.images) == 12
    x, y = all_batches(bundle.test)
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 1, 1, 2, 2]
    pixels = unnormalise(x)[:, :, 4, 4]        # centre pixel = the class colour
    for img, label in zip(pixels, y):
        assert img.tolist() == list(COLORS[bundle.classes[label]])


@pytest.mark.parametrize("archive", ["ds.tar.xz", "ds.zip", "ds.tar.gz", "ds.tar"])
def test_archive_matches_folder(tmp_path, archive):
    folder = make_folder(tmp_path / "cifarish", test_name="val")
    path = make_archive(folder, tmp_path / archive)
    from_archive = build_data(cfg_for(path, tmp_path / "c1"), 4, 100)
    from_folder = build_data(cfg_for(tmp_path, tmp_path / "c2"), 4, 100)   # single top-level folder inside
    assert from_archive.classes == from_folder.classes == ["cat", "dog", "emu"]
    assert torch.equal(from_archive.train.images, from_folder.train.images)
    assert torch.equal(from_archive.train.labels, from_folder.train.labels)
    assert torch.equal(from_archive.test.labels, torch.tensor([0, 0, 1, 1, 2, 2]))


def test_cifar_name_reads_archive_root_and_checks_class_count(tmp_path):
    path = make_archive(make_folder(tmp_path / "cifar10"), tmp_path / "c.zip")
    with pytest.raises(DataError, match="expects 10 classes"):
        build_data(cfg_for(path, tmp_path / "cache", name="cifar10"), 4, 4)


def test_cache_is_created_then_reused_without_decoding(tmp_path, monkeypatch):
    path = make_archive(make_folder(tmp_path / "ds"), tmp_path / "ds.tar.xz")
    cache = tmp_path / "cache"
    first = build_data(cfg_for(path, cache), 4, 100)
    files = list(cache.glob("ds.tar.xz.stimulative-*.pt"))
    assert len(files) == 1
    stored = torch.load(files[0], weights_only=True)
    assert stored["train"]["images"].dtype == torch.uint8 and stored["classes"] == ["cat", "dog", "emu"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache exists")

    monkeypatch.setattr(data_files, "decode_source", no_decoding)
    monkeypatch.setattr(data_files, "decode_image", no_decoding)
    second = build_data(cfg_for(path, cache), 4, 100)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_changed_archive_gets_a_new_cache_key(tmp_path):
    path = make_archive(make_folder(tmp_path / "ds"), tmp_path / "ds.zip")
    source = data_files.ImageSource(path)
    before = data_files.cache_path(source, tmp_path)
    make_archive(make_folder(tmp_path / "ds", per_class={"train": 5, "test": 2}), path)
    assert data_files.cache_path(data_files.ImageSource(path), tmp_path) != before


def test_decoding_in_a_process_pool_gives_the_same_images(tmp_path):
    path = make_archive(make_folder(tmp_path / "ds", per_class={"train": 200, "test": 2}), tmp_path / "ds.zip")
    source = data_files.ImageSource(path)
    serial = data_files.decode_source(source, workers=1)
    pooled = data_files.decode_source(source, workers=2)
    assert len(serial.train_images) == 600
    assert torch.equal(serial.train_images, pooled.train_images)
    assert torch.equal(serial.train_labels, pooled.train_labels)


# --- bad data --------------------------------------------------------------------------------------------------

def test_corrupt_images_skipped_with_one_counting_warning(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "bad1.png").write_bytes(b"not an image")
    (root / "train" / "dog" / "bad2.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = build_data(cfg_for(root, tmp_path / "cache"), 4, 4)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1 and "skipped 2 unreadable" in messages[0]
    assert len(bundle.train.images) == 12


def test_corrupt_image_strict_names_the_file(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "bad1.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad1.png"):
        build_data(cfg_for(root, tmp_path / "cache", strict=True), 4, 4)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        build_data(cfg_for(tmp_path / "nowhere", tmp_path), 4, 4)
    assert "nowhere" in str(err.value)


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "ds" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found") as err:
        build_data(cfg_for(tmp_path / "ds", tmp_path / "cache"), 4, 4)
    assert str(tmp_path / "ds") in str(err.value)


def test_missing_test_split_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "ds", per_class={"train": 2})
    with pytest.raises(DataError, match="test"):
        build_data(cfg_for(root, tmp_path / "cache"), 4, 4)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown data.name"):
        build_data(DataConfig(name="mnist"), 4, 4)


# --- torchvision CIFAR -----------------------------------------------------------------------------------------

def test_cifar_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="data.download=true") as err:
        build_data(DataConfig(name="cifar10", root=str(tmp_path)), 4, 4)
    assert str(tmp_path) in str(err.value) and "data.root" in str(err.value)


def test_cifar_loads_torchvision_pickle_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)   # our fake files have other md5s
    bundle = build_data(DataConfig(name="cifar10", root=str(tmp_path), augment="none"), 10, 100)
    assert bundle.classes == [f"c{i}" for i in range(10)] and len(bundle.train.images) == 100
    x, y = all_batches(bundle.test)
    assert x.shape == (20, 3, 32, 32) and y.tolist() == list(range(10)) * 2
    first = pickle.loads((base / "test_batch").read_bytes())["data"][0].reshape(3, 32, 32)
    assert torch.equal(unnormalise(x[:1], "cifar10")[0], torch.from_numpy(first).float())


# --- subsets, digits, synthetic --------------------------------------------------------------------------------

def test_stratified_subset_is_proportional_and_seeded():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_subset(labels, 20, seed=3)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert labels[idx].bincount().tolist() == [12, 6, 2]
    assert torch.equal(idx, stratified_subset(labels, 20, seed=3))
    assert not torch.equal(idx, stratified_subset(labels, 20, seed=4))
    assert torch.equal(stratified_subset(labels, 0), torch.arange(100))


def test_subset_config_applies_to_files(tmp_path):
    root = make_folder(tmp_path / "ds", per_class={"train": 10, "test": 4})
    bundle = build_data(cfg_for(root, tmp_path / "cache", train_subset=6, test_subset=3), 2, 10, seed=1)
    assert bundle.train.labels.bincount().tolist() == [2, 2, 2]
    assert len(bundle.test.labels) == 3
    again = build_data(cfg_for(root, tmp_path / "cache", train_subset=6, test_subset=3), 2, 10, seed=1)
    assert torch.equal(bundle.train.images, again.train.images)


def test_digits_loads_with_right_shapes():
    bundle = build_data(DataConfig(name="digits", input_size=16, augment="none"), 32, 1000)
    assert bundle.num_classes == 10 and bundle.input_size == 16
    assert len(bundle.train.images) + len(bundle.test.images) == 1797
    assert len(bundle.test.images) == round(0.2 * 1797)
    assert bundle.train.images.shape[1:] == (3, 16, 16)
    assert bundle.test.labels.bincount().min() >= 30          # stratified: every digit in the test split
    x, y = next(iter(bundle.test))
    assert x.shape == (359, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])                     # grey digits repeated to RGB
    again = build_data(DataConfig(name="digits", input_size=16), 32, 1000, seed=7)
    assert torch.equal(again.test.images, bundle.test.images)   # fixed split, independent of the run seed


def test_synthetic_keeps_working():
    bundle = build_data(DataConfig(name="synthetic", train_subset=64, test_subset=32), 16, 32)
    assert len(bundle.train) == 4 and len(bundle.test) == 1


def test_synthetic_test_split_has_the_training_classes():
    # class means of the training images classify the test images: the splits share their class patterns
    xtr, ytr = synthetic_dataset(200, size=8, seed=3, sample_seed=1)
    xte, yte = synthetic_dataset(100, size=8, seed=3, sample_seed=2)
    assert not torch.equal(xtr[:100], xte)
    means = torch.stack([xtr[ytr == c].float().mean(0) for c in range(10)]).flatten(1)
    pred = torch.cdist(xte.float().flatten(1), means).argmin(1)
    assert (pred == yte).float().mean() > 0.9


# --- in-memory augmentation and sharding -----------------------------------------------------------------------

def test_no_padding_no_flip_returns_the_original_images_normalised():
    x, y = synthetic_dataset(40, size=8)
    batches = TensorBatches(x, y, 16, (0.5,) * 3, (0.25,) * 3, train=True, augment="cifar", padding=0, flip=False,
                            drop_last=False)
    order = batches._indices()
    out, labels = all_batches(batches)
    expected = (x[order].float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, expected, atol=1e-5) and torch.equal(labels, y[order])


def test_crops_are_shifted_and_flipped_copies():
    x, y = synthetic_dataset(64, size=8, seed=1)
    p = 2
    batches = TensorBatches(x, y, 64, (0.0,) * 3, (1.0,) * 3, train=True, augment="cifar", padding=p)
    batches.set_epoch(1)
    out, _ = all_batches(batches)
    out = (out * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x[batches._indices()], (p, p, p, p))
    flips = shifted = 0
    offsets = set()
    for img, src in zip(out, padded):
        candidates = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for f in (False, True)
                      if torch.equal(img, src[:, dy:dy + 8, dx:dx + 8].flip(2) if f else src[:, dy:dy + 8, dx:dx + 8])]
        assert candidates, "an augmented image is not a shifted (and maybe flipped) copy of its source"
        flips += any(f for _, _, f in candidates) and not any(not f for _, _, f in candidates)
        shifted += all((dy, dx) != (p, p) for dy, dx, _ in candidates)
        offsets.update((dy, dx) for dy, dx, _ in candidates)
    assert 10 < flips < 54 and shifted > 32       # about half flipped, most shifted
    assert len(offsets) > 2 * (2 * p + 1)         # rows and columns shifted independently


def test_same_epoch_same_batches_different_epoch_different():
    x, y = synthetic_dataset(64, size=8)
    batches = TensorBatches(x, y, 16, (0.5,) * 3, (0.25,) * 3, train=True, augment="cifar", seed=5)
    batches.set_epoch(2)
    a = all_batches(batches)[0]
    b = all_batches(batches)[0]
    batches.set_epoch(3)
    c = all_batches(batches)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("n", [64, 63])
def test_two_ranks_see_disjoint_shards_covering_the_set(n):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    y = torch.arange(n)
    seen = []
    for rank in range(2):
        b = TensorBatches(x, y, 8, (0.0,) * 3, (1.0,) * 3, train=True, seed=4, rank=rank, world_size=2,
                          drop_last=False)
        b.set_epoch(1)
        seen.append(torch.cat([yb for _, yb in b]).tolist())
    assert len(seen[0]) == len(seen[1]) == -(-n // 2)
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    if n % 2 == 0:
        assert not set(seen[0]) & set(seen[1])
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=2, rank=1, shuffle=False)
    plain = TensorBatches(x, y, 8, (0.0,) * 3, (1.0,) * 3, rank=1, world_size=2)
    assert plain._indices().tolist() == list(sampler)       # same split as DistributedSampler


# --- the DataLoader pipeline (large images) --------------------------------------------------------------------

def test_imagenet_pipeline_returns_right_shapes(tmp_path):
    root = make_folder(tmp_path / "big", size=72, per_class={"train": 3, "val": 2}, fmt="jpg")
    cfg = cfg_for(root, tmp_path / "cache", augment="imagenet", input_size=32, uniform_augment=True, workers=0)
    bundle = build_data(cfg, batch_size=4, eval_batch_size=5)
    assert isinstance(bundle.train, LoaderBatches) and len(bundle.train) == 2 and len(bundle.test) == 2
    bundle.train.set_epoch(1)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xt, yt = all_batches(bundle.test)
    assert xt.shape == (6, 3, 32, 32) and yt.tolist() == [0, 0, 1, 1, 2, 2]
    assert not list(tmp_path.glob("cache/*"))       # large images are not cached
    assert bundle.test.mean.flatten().tolist() == pytest.approx(DATASET_STATS["folder"][0])   # for exporters


def test_imagenet_eval_sizes_and_worker_processes(tmp_path):
    root = make_folder(tmp_path / "big", size=72, per_class={"train": 4, "test": 2}, fmt="jpg")
    cfg = cfg_for(root, tmp_path / "cache", augment="imagenet", input_size=24, val_resize=40, val_crop=36,
                  workers=2)
    bundle = build_data(cfg, batch_size=6, eval_batch_size=6)
    bundle.train.set_epoch(0)
    x, _ = all_batches(bundle.train)
    xt, _ = all_batches(bundle.test)
    assert x.shape == (12, 3, 24, 24) and xt.shape == (6, 3, 36, 36)


@pytest.mark.parametrize("archive", ["big.zip", "big.tar"])
def test_loader_reads_random_access_archives(tmp_path, archive):
    folder = make_folder(tmp_path / "big", size=72, per_class={"train": 2, "test": 1}, fmt="png")
    path = make_archive(folder, tmp_path / archive)
    cfg = cfg_for(path, tmp_path / "cache", augment="none", input_size=72, workers=0)
    bundle = build_data(cfg, batch_size=3, eval_batch_size=3)
    xt, yt = all_batches(bundle.test)
    assert yt.tolist() == [0, 1, 2]
    assert unnormalise(xt)[:, :, 30, 30].tolist() == [list(c) for c in COLORS.values()]


def test_large_images_in_compressed_tar_explain_what_to_do(tmp_path):
    path = make_archive(make_folder(tmp_path / "big", size=72), tmp_path / "big.tar.gz")
    with pytest.raises(DataError, match="extract it"):
        build_data(cfg_for(path, tmp_path / "cache", augment="imagenet", input_size=32, workers=0), 2, 2)


def test_loader_skips_corrupt_files_or_names_them_when_strict(tmp_path):
    root = make_folder(tmp_path / "big", size=72, per_class={"train": 2, "test": 2}, fmt="jpg")
    (root / "test" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    cfg = cfg_for(root, tmp_path / "cache", augment="imagenet", input_size=32, workers=0)
    bundle = build_data(cfg, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = all_batches(bundle.test)
    assert len(y) == 6
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1 and "skipped 1" in messages[0] and "broken.jpg" in messages[0]
    strict = build_data(replace(cfg, strict=True), 4, 4)
    with pytest.raises(DataError, match="broken.jpg"):
        all_batches(strict.test)


def test_loader_shuffle_is_seeded_per_epoch(tmp_path):
    root = make_folder(tmp_path / "big", size=72, per_class={"train": 4, "test": 1}, fmt="png")
    cfg = cfg_for(root, tmp_path / "cache", augment="none", input_size=16, workers=0)

    def labels(epoch: int) -> list[int]:
        bundle = build_data(cfg, 3, 3, seed=11)
        bundle.train.set_epoch(epoch)
        return all_batches(bundle.train)[1].tolist()

    assert labels(2) == labels(2) and labels(2) != labels(3)


def test_loader_two_ranks_split_the_training_set(tmp_path):
    root = make_folder(tmp_path / "big", size=72, per_class={"train": 4, "test": 1}, fmt="png")
    cfg = cfg_for(root, tmp_path / "cache", augment="none", input_size=16, workers=0)
    counts = [len(build_data(cfg, 2, 2, rank=r, world_size=2).train) for r in range(2)]
    assert counts == [3, 3]        # 12 images -> 6 per rank -> 3 batches of 2


def test_lighting_changes_the_image_by_a_small_uniform_offset():
    torch.manual_seed(0)
    img = torch.rand(3, 16, 16)
    out = Lighting(0.1)(img)
    delta = out - img
    assert 0 < delta.abs().max() < 0.1
    assert torch.allclose(delta, delta[:, :1, :1].expand_as(delta), atol=1e-6)   # same RGB shift everywhere
    assert torch.equal(Lighting(0.0)(img), img)


def test_uniform_augment_applies_drawn_ops_with_probability():
    img = Image.fromarray(np.full((8, 8, 3), 40, dtype=np.uint8))
    invert_only = [op for op in UNIFORM_AUGMENT_OPS if op[0] == "invert"]
    always = UniformAugment(num_ops=1, prob=1.0, ops=invert_only)
    assert np.asarray(always(img)).tolist() == np.full((8, 8, 3), 215).tolist()
    never = UniformAugment(num_ops=2, prob=0.0)
    assert np.array_equal(np.asarray(never(img)), np.asarray(img))
    torch.manual_seed(0)
    changed = sum(not np.array_equal(np.asarray(UniformAugment()(img)), np.asarray(img)) for _ in range(40))
    assert 5 < changed < 40


def test_imagenet_train_transform_output():
    torch.manual_seed(0)
    tf = imagenet_train_transform(20, 0.4, 0.1, True, DATASET_STATS["imagenet"][0], DATASET_STATS["imagenet"][1])
    out = tf(Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)))
    assert type(out) is torch.Tensor and out.shape == (3, 20, 20) and out.dtype == torch.float32


# --- in memory or not: decided by a sample of images -------------------------------------------------------------

def test_one_thumbnail_in_front_does_not_pull_a_folder_of_photos_into_memory(tmp_path):
    """The first image in storage order (test/cat/0.png) is a thumbnail, every other one a photo: the folder
    goes through the DataLoader pipeline, not into memory."""
    root = make_folder(tmp_path / "photos", size=96)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "test" / "cat" / "0.png")
    source = data_files.ImageSource(root)
    assert next(source.stream())[0] == "test/cat/0.png"
    assert source.probe_size() == (96, 96)
    bundle = build_data(cfg_for(root, tmp_path / "cache", input_size=32), 4, 4)
    assert isinstance(bundle.train, LoaderBatches)
    assert not list((tmp_path / "cache").glob("*.pt"))   # nothing decoded into a cache


@pytest.mark.parametrize("archive", [None, "ds.zip", "ds.tar", "ds.tar.gz"])
def test_probe_reads_a_sample_spread_over_the_source(tmp_path, archive):
    """Small images with one large photo in front stay in memory; the probe opens each sampled file once."""
    root = make_folder(tmp_path / "small", size=8, per_class={"train": 10, "test": 2})
    Image.fromarray(np.zeros((300, 200, 3), dtype=np.uint8)).save(root / "test" / "cat" / "0.png")
    source = data_files.ImageSource(root if archive is None else make_archive(root, tmp_path / archive))
    assert source.probe_size() == (8, 8)
    if archive is None:
        opened = []
        real_open = Image.open

        def counting_open(fp, *args, **kwargs):
            opened.append(str(fp))
            return real_open(fp, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("stimulative.data.archives.Image.open", counting_open)
            assert source.probe_size(samples=4) == (8, 8)
        # 36 images: 4 evenly spaced (every 9th, from the first), headers only
        assert [Path(p).relative_to(root).as_posix() for p in opened] == \
            ["test/cat/0.png", "train/cat/3.png", "train/dog/2.png", "train/emu/1.png"]
    bundle = build_data(cfg_for(source.root, tmp_path / "cache", input_size=8), 4, 4)
    assert isinstance(bundle.train, TensorBatches)
