"""Issue 14, data: images of mixed sizes are each resized on their own (never to the first image's size), and the
decode cache lives in the user's cache directory (movable, can be turned off, a read-only place never fails a
run). Tiny generated folders only."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import make_archive, make_folder

from stimulative.data import build_data
from stimulative.train.config import DataConfig


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """``$XDG_CACHE_HOME`` inside the test's folder: no test writes to the real user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "stimulative"


def pattern(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_mixed_sizes_are_resized_each_on_its_own_not_to_the_first_image(tmp_path):
    """The first image (in storage order) is 4x4, the others 16x16 = data.input_size: those stay exact."""
    root = tmp_path / "mixed"
    originals = {}
    for split in ("test", "train"):
        for c, cls in enumerate(("a", "b")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                arr = pattern(4 if i == 0 else 16, seed=100 * c + 10 * i + len(split))
                Image.fromarray(arr).save(d / f"{i}.png")
                originals[(split, cls, i)] = arr
    cfg = DataConfig(name="folder", root=str(root), augment="none", input_size=16, workers=1, cache_dir=str(tmp_path / "c"),
                     mean=[0.0, 0.0, 0.0], std=[1 / 255] * 3)
    bundle = build_data(cfg, batch_size=2, eval_batch_size=6)
    x, y = next(iter(bundle.test))
    assert x.shape == (6, 3, 16, 16)
    images = x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()   # mean 0, std 1/255: the raw pixels
    # test/a/{0,1,2}, test/b/{0,1,2}: the 16x16 ones are bit-exact, the 4x4 ones upsampled to 16x16
    for k, (cls, i) in enumerate([("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]):
        if i:
            assert np.array_equal(images[k], originals[("test", cls, i)]), (cls, i)
    assert torch.equal(bundle.train.images[1].permute(1, 2, 0), torch.from_numpy(originals[("train", "a", 1)]))


def test_decode_cache_defaults_to_the_user_cache_directory(tmp_path, user_cache):
    shared = tmp_path / "shared"
    shared.mkdir()
    path = make_archive(make_folder(tmp_path / "ds"), shared / "ds.zip")
    cfg = DataConfig(name="folder", root=str(path), augment="none", input_size=8, workers=1)
    first = build_data(cfg, 4, 4)
    assert list(shared.iterdir()) == [path]                         # nothing written next to the dataset
    cached = list(user_cache.glob("ds.zip.stimulative-*.pt"))
    assert len(cached) == 1
    other_size = build_data(replace(cfg, input_size=4), 4, 4)   # the key has the size
    assert len(list(user_cache.glob("ds.zip.stimulative-*.pt"))) == 2
    assert first.train.images.shape[-1] == 8 and other_size.train.images.shape[-1] == 4


def test_cache_dir_moves_the_cache_and_cache_false_turns_it_off(tmp_path, user_cache):
    path = make_archive(make_folder(tmp_path / "ds"), tmp_path / "ds.tar")
    build_data(DataConfig(name="folder", root=str(path), augment="none", input_size=8, workers=1,
                          cache_dir=str(tmp_path / "mine")), 4, 4)
    assert len(list((tmp_path / "mine").glob("*.pt"))) == 1
    build_data(DataConfig(name="folder", root=str(path), augment="none", input_size=8, workers=1, cache=False), 4, 4)
    assert not user_cache.exists()


def test_read_only_cache_location_costs_one_warning_never_the_run(tmp_path):
    path = make_archive(make_folder(tmp_path / "ds"), tmp_path / "ds.zip")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)   # read-only for everyone (root could write; the cache must not)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bundle = build_data(DataConfig(name="folder", root=str(path), augment="none", input_size=8, workers=1,
                                           cache_dir=str(locked)), 4, 4)
    finally:
        locked.chmod(0o755)
    assert len(bundle.train.images) == 12 and not list(locked.iterdir())
    messages = [str(w.message) for w in caught if "cach" in str(w.message)]
    assert len(messages) == 1 and str(locked) in messages[0]
