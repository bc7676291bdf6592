"""Image datasets stored as files: ImageFolder directories and ``.tar``/``.tar.gz``/``.tgz``/``.tar.xz``/``.zip``
archives laid out as ``[top/]{train,test|val}/<class>/<image>``.

Two ways to read them:

* ``load_decoded`` decodes every image once (PIL, a process pool over the CPU cores, archives streamed without
  extracting to disk), resizes each image on its own to the requested size (cover + center crop; images of
  mixed sizes never take the size of one of them) into uint8 NCHW tensors, and caches them in one ``torch.save``
  file keyed by the source's path, size and modification time and the image size, in the user's cache directory
  (``$XDG_CACHE_HOME/stimulative`` or ``~/.cache/stimulative``; never next to the dataset). Later runs load the
  cache in a second; a cache location that cannot be written costs one warning, never the run. Used for small
  images (CIFAR-sized).
* ``FileImageDataset`` reads one image per ``__getitem__`` (folders, zip archives and uncompressed tars, which
  allow random access) for the DataLoader pipeline of large images.

Example::

    source = ImageSource("/data/cifar10-jpeg.tar.xz")
    decoded = load_decoded(source, cache_dir=None, workers=2, strict=False, size=32)
    decoded.train_images.shape      # torch.Size([50000, 3, 32, 32])
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import tarfile
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_torch_save, writable_dir


class DataError(ValueError):
    """Missing, empty or corrupt data."""


__all__ = [
    "DataError", "IMAGE_EXTENSIONS", "SMALL_IMAGE_MAX", "PROBE_IMAGES", "ImageSource", "DecodedImages", "SplitIndex", "FileImageDataset",
    "is_archive", "looks_like_image_folder", "load_decoded", "cache_path", "user_cache_dir", "decode_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip")
TEST_SPLITS = ("test", "val")  # preferred order
SMALL_IMAGE_MAX = 64            # images up to this many pixels per side are decoded into memory
PROBE_IMAGES = 16               # images whose size decides that (ImageSource.probe_size)
CACHE_FORMAT = "stimulative-images-v2"   # v2: every image resized on its own to the size in the key
_CHUNK = 256                    # images per decode task


def _evenly_spaced(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items``, the first included (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def is_archive(path: str | Path) -> bool:
    """True when ``path`` is an existing file with an archive suffix (tar, tar.gz, tgz, tar.xz, tar.bz2, zip)."""
    path = Path(path).expanduser()
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def looks_like_image_folder(path: str | Path) -> bool:
    """True when ``path`` is a directory with ``train/`` and ``test/`` (or ``val/``), directly or in its only
    sub-directory."""
    return _split_base(Path(path).expanduser()) is not None


def _split_base(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    if (root / "train").is_dir() and any((root / s).is_dir() for s in TEST_SPLITS):
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subdirs) == 1:
        sub = subdirs[0]
        if (sub / "train").is_dir() and any((sub / s).is_dir() for s in TEST_SPLITS):
            return sub
    return None


def _classify(relname: str) -> tuple[str, str, str] | None:
    """``[top/]split/class/file.jpg`` -> (top, split, class); None for anything else."""
    parts = PurePosixPath(relname.replace("\\", "/")).parts
    if not 3 <= len(parts) <= 4 or parts[-3] not in ("train", *TEST_SPLITS):
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
        return None
    return "/".join(parts[:-3]), parts[-3], parts[-2]


def decode_image(data: bytes | str) -> np.ndarray:
    """Decode encoded image bytes (or a file path) with PIL into an RGB uint8 HWC array."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return np.asarray(img.convert("RGB"))


def _decode_chunk(items: list[bytes | str], size: int | None = None) -> list[np.ndarray | str]:
    """Decode a chunk in a worker, each image resized on its own to ``size`` x ``size`` (None: as stored); an
    unreadable image becomes its error message."""
    out: list[np.ndarray | str] = []
    for item in items:
        try:
            img = decode_image(item)
            out.append(img if size is None or img.shape[:2] == (size, size) else _fit(img, size, size))
        except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable image
            out.append(f"{type(err).__name__}: {err}")
    return out


@dataclass
class SplitIndex:
    """Random-access listing of a source: per split the image references and labels, plus the class names."""

    classes: list[str]
    train: list[tuple[Any, int]]
    test: list[tuple[Any, int]]
    names: dict[Any, str] = field(default_factory=dict)   # tar offsets -> member name (for error messages)


@dataclass
class DecodedImages:
    """A source decoded into memory (what the cache file holds)."""

    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    skipped: list[str]


class ImageSource:
    """An ImageFolder directory or an archive with ``train/`` and ``test/`` (or ``val/``) class folders.

    Args:
        root: directory or archive path.

    Raises:
        DataError: the path does not exist, or is neither a directory nor a supported archive.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(f"dataset path {str(self.root)!r} does not exist")
        name = self.root.name.lower()
        if self.root.is_dir():
            self.kind = "folder"
        elif name.endswith(".zip"):
            self.kind = "zip"
        elif name.endswith(".tar"):
            self.kind = "tar"
        elif name.endswith(ARCHIVE_SUFFIXES):
            self.kind = "compressed-tar"
        else:
            raise DataError(f"dataset path {str(self.root)!r} is neither a directory nor an archive "
                            f"({', '.join(ARCHIVE_SUFFIXES)})")
        self._files: list[tuple[str, str]] | None = None

    def __repr__(self) -> str:
        return f"ImageSource({str(self.root)!r}, kind={self.kind!r})"

    # --- listing -----------------------------------------------------------------------------------------------
    def _folder_files(self) -> list[tuple[str, str]]:
        """(relative posix name, path) of the folder's files up to 4 levels deep, sorted (plain strings: an
        ImageNet-sized listing stays small)."""
        if self._files is None:
            files = []
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < 3 else []
                prefix = "" if rel_dir == "." else rel_dir + "/"
                files.extend((prefix + f, os.path.join(dirpath, f)) for f in sorted(filenames))
            self._files = files
        return self._files

    def stream(self) -> Iterator[tuple[str, bytes | str]]:
        """Every file in storage order as (relative name, bytes); folders give the file path instead of bytes."""
        if self.kind == "folder":
            for rel, path in self._folder_files():
                if _classify(rel):
                    yield rel, path
        elif self.kind == "zip":
            with zipfile.ZipFile(self.root) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and _classify(info.filename):
                        yield info.filename, zf.read(info)
        else:
            with tarfile.open(self.root, "r|*") as tf:
                for member in tf:
                    if member.isfile() and _classify(member.name):
                        fh = tf.extractfile(member)
                        if fh is not None:
                            yield member.name, fh.read()

    def name_of(self, rel: str) -> str:
        """A readable name for a file of this source (``archive:member`` for archives)."""
        return str(self.root / rel) if self.kind == "folder" else f"{self.root}:{rel}"

    def probe_size(self, samples: int = PROBE_IMAGES) -> tuple[int, int] | None:
        """(height, width) of the source's typical image: the median, by longer side, of up to ``samples`` images
        spread evenly over the source (one small thumbnail does not stand for a folder of photos). Only the
        image headers are read (PIL's lazy ``Image.open(...).size``). Compressed tar archives, which cannot seek,
        sample their first ``samples`` images. None when no image is readable.

        Raises:
            DataError: an unreadable archive.
        """
        sizes: list[tuple[int, int]] = []
        try:
            with contextlib.ExitStack() as stack:
                for item in self._sample(samples, stack):
                    try:
                        with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as img:
                            width, height = img.size
                    except Exception:  # noqa: BLE001 - a corrupt image does not decide
                        continue
                    sizes.append((height, width))
            if not sizes:   # every sampled image is corrupt: the first readable one, wherever it is
                for _, data in self.stream():
                    try:
                        img = decode_image(data)
                    except Exception:  # noqa: BLE001 - corrupt: try the next
                        continue
                    return img.shape[0], img.shape[1]
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"cannot read archive {str(self.root)!r}: {err}") from None
        if not sizes:
            return None
        return sorted(sizes, key=max)[len(sizes) // 2]

    def _sample(self, samples: int, stack: contextlib.ExitStack) -> Iterator[bytes | str | IO[bytes]]:
        """Up to ``samples`` images evenly spaced over the source (the first ones for a compressed tar), each as a
        path, an open member or bytes; archives stay open in ``stack``."""
        if self.kind == "compressed-tar":
            for i, (_, data) in enumerate(self.stream()):
                if i >= samples:
                    return
                yield data
            return
        if self.kind == "folder":
            refs: list[Any] = [path for rel, path in self._folder_files() if _classify(rel)]
        elif self.kind == "zip":
            zf = stack.enter_context(zipfile.ZipFile(self.root))
            refs = [info for info in zf.infolist() if not info.is_dir() and _classify(info.filename)]
        else:
            tf = stack.enter_context(tarfile.open(self.root, "r:"))
            refs = [m for m in tf.getmembers() if m.isfile() and _classify(m.name)]
        for ref in _evenly_spaced(refs, samples):
            if self.kind == "folder":
                yield ref
            elif self.kind == "zip":
                yield stack.enter_context(zf.open(ref))
            else:
                fh = tf.extractfile(ref)
                if fh is not None:
                    yield fh

    def train_files(self) -> dict[str, int]:
        """What identifies the training images cheaply (no contents read): ``{"files", "bytes"}`` of the
        ``train/`` images of a folder (names and sizes from the listing, one ``stat`` each); an archive's own
        size (``files`` 1). Modification times are left out, so a copied or moved dataset is the same one."""
        if self.kind != "folder":
            return {"files": 1, "bytes": self.root.stat().st_size}
        files = total = 0
        for rel, path in self._folder_files():
            parsed = _classify(rel)
            if parsed is not None and parsed[1] == "train":
                files += 1
                total += os.stat(path).st_size
        return {"files": files, "bytes": total}

    def fingerprint(self) -> str:
        """Identifies the content: path + size + mtime for archives; every file's name, size, mtime for folders."""
        if self.kind != "folder":
            st = self.root.stat()
            return f"{self.root.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        h = hashlib.sha1(str(self.root.resolve()).encode())
        for rel, path in self._folder_files():
            if _classify(rel):
                st = os.stat(path)
                h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def index(self) -> SplitIndex:
        """Random-access listing (folders, zip and uncompressed tar archives).

        Raises:
            DataError: compressed tar archives (no random access), or a bad layout / empty split.
        """
        if self.kind == "compressed-tar":
            raise DataError(f"{str(self.root)!r} is a compressed tar archive, which cannot be read image by image; "
                            f"extract it (tar xf {self.root.name}) and set data.root to the folder, or repack it "
                            f"as .zip or uncompressed .tar")
        entries: list[tuple[str, Any]] = []
        try:
            if self.kind == "folder":
                entries = [(rel, path) for rel, path in self._folder_files() if _classify(rel)]
            elif self.kind == "zip":
                with zipfile.ZipFile(self.root) as zf:
                    entries = [(i.filename, i.filename) for i in zf.infolist() if not i.is_dir() and _classify(i.filename)]
            else:
                with tarfile.open(self.root, "r:") as tf:
                    entries = [(m.name, (m.offset_data, m.size)) for m in tf.getmembers()
                               if m.isfile() and _classify(m.name)]
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
            raise DataError(f"cannot read archive {str(self.root)!r}: {err}") from None
        layout = _Layout(self)
        for rel, ref in entries:
            layout.add(rel, ref)
        classes, splits = layout.finish()
        # folders and zips name an image by its reference; only tar offsets need a name table
        names = {ref: self.name_of(rel) for rel, ref in entries} if self.kind == "tar" else {}
        return SplitIndex(classes, splits["train"], splits["test"], names)


class _Layout:
    """Collects (relative name, payload) pairs into train/test splits and checks the layout."""

    def __init__(self, source: ImageSource):
        self.source = source
        self.tops: set[str] = set()
        self.items: dict[str, list[tuple[Any, str]]] = {"train": [], "test": [], "val": []}

    def add(self, rel: str, payload: Any) -> bool:
        parsed = _classify(rel)
        if parsed is None:
            return False
        top, split, cls = parsed
        self.tops.add(top)
        if len(self.tops) > 1:
            a, b = sorted(self.tops)[:2]
            raise DataError(f"{str(self.source.root)!r} holds several datasets ({a or '.'!r} and {b or '.'!r}); "
                            f"point data.root at one of them")
        self.items[split].append((payload, cls))
        return True

    def finish(self) -> tuple[list[str], dict[str, list[tuple[Any, int]]]]:
        root = str(self.source.root)
        if not self.items["train"]:
            raise DataError(f"no images found in {root!r}: expected [top/]train/<class>/<image> and "
                            f"[top/]test/<class>/<image> (or val/) with extensions {', '.join(IMAGE_EXTENSIONS)}")
        test_split = next((s for s in TEST_SPLITS if self.items[s]), None)
        if test_split is None:
            raise DataError(f"no test images found in {root!r}: expected a test/<class>/ or val/<class>/ folder "
                            f"next to train/")
        classes = sorted({cls for _, cls in self.items["train"]})
        lookup = {c: i for i, c in enumerate(classes)}
        unknown = sorted({cls for _, cls in self.items[test_split]} - set(classes))
        if unknown:
            raise DataError(f"{root!r}: {test_split}/ has classes that train/ lacks: {', '.join(unknown[:5])}")
        splits = {"train": [(p, lookup[c]) for p, c in self.items["train"]],
                  "test": [(p, lookup[c]) for p, c in self.items[test_split]]}
        return classes, splits


# --- decoding into memory + cache ------------------------------------------------------------------------------

def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stimulative``, or ``~/.cache/stimulative``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stimulative"


def cache_path(source: ImageSource, cache_dir: str | Path | None = None, size: int | None = None) -> Path:
    """Where the decoded copy of ``source`` at ``size`` px lives: in ``cache_dir``, else ``user_cache_dir()``. The
    name carries a hash of the source's fingerprint (path, size, modification time) and ``size``."""
    key = hashlib.sha1(f"{CACHE_FORMAT}|{source.fingerprint()}|{size}".encode()).hexdigest()[:16]
    return Path(cache_dir or user_cache_dir()).expanduser() / f"{source.root.name}.stimulative-{key}.pt"


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize the shorter side to cover (h, w), then center-crop to exactly (h, w)."""
    pil = Image.fromarray(img)
    scale = max(h / pil.height, w / pil.width)
    nh, nw = max(h, round(pil.height * scale)), max(w, round(pil.width * scale))
    pil = pil.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = (nh - h) // 2, (nw - w) // 2
    return np.asarray(pil.crop((left, top, left + w, top + h)))


def decode_source(source: ImageSource, workers: int = 2, strict: bool = False,
                  decoder: Callable[[list], list] | None = None, size: int | None = None) -> DecodedImages:
    """Decode every image of ``source`` into uint8 NCHW tensors, each resized on its own to ``size`` x ``size``.

    Args:
        source: the folder or archive.
        workers: decoding processes (1 = decode in this process).
        strict: an unreadable image raises ``DataError`` naming it; otherwise it is skipped and counted.
        decoder: chunk decoder (defaults to the PIL one; tests replace it).
        size: the side every image is resized to (cover, then center crop). None keeps the stored sizes, which
            must then all be the same (``DataError`` otherwise: nothing is resized to another image's size).
    """
    decoder = decoder or partial(_decode_chunk, size=size)
    layout = _Layout(source)
    results: list[np.ndarray | str] = []
    names: list[str] = []
    pending: deque[Future] = deque()
    pool = _pool(workers)
    total = sum(1 for rel, _ in source._folder_files() if _classify(rel)) if source.kind == "folder" else None
    bar = tqdm(desc=f"decoding {source.root.name}", unit="img", total=total, mininterval=1.0)

    def collect(chunk: list) -> None:
        results.extend(chunk)
        bar.update(len(chunk))
        if strict:
            for i in range(len(results) - len(chunk), len(results)):
                if isinstance(results[i], str):
                    raise DataError(f"cannot read image {names[i]}: {results[i]}")

    try:
        chunk: list[bytes | str] = []
        for rel, payload in source.stream():
            layout.add(rel, len(names))
            names.append(source.name_of(rel))
            chunk.append(payload)
            if len(chunk) == _CHUNK:
                if pool is None:
                    collect(decoder(chunk))
                else:
                    pending.append(pool.submit(decoder, chunk))
                    while len(pending) > 4 * workers:
                        collect(pending.popleft().result())
                chunk = []
        if chunk:
            if pool is None:
                collect(decoder(chunk))
            else:
                pending.append(pool.submit(decoder, chunk))
        while pending:
            collect(pending.popleft().result())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"cannot read archive {str(source.root)!r}: {err}") from None
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    classes, splits = layout.finish()
    skipped = [f"{names[i]} ({r})" for i, r in enumerate(results) if isinstance(r, str)]
    first = next((r for r in results if not isinstance(r, str)), None)
    if first is None:
        raise DataError(f"none of the {len(results)} images in {str(source.root)!r} could be read "
                        f"(first error: {skipped[0] if skipped else '?'})")
    h, w = first.shape[:2]

    def stack(items: list[tuple[int, int]], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        arrays, labels = [], []
        for i, label in items:
            img = results[i]
            if isinstance(img, str):
                continue
            if img.shape[:2] != (h, w):
                raise DataError(f"images of {str(source.root)!r} have different sizes ({names[i]} is "
                                f"{img.shape[1]}x{img.shape[0]}, others {w}x{h}); give the size to decode them at")
            arrays.append(img)
            labels.append(label)
        if not arrays:
            raise DataError(f"no readable {split} images in {str(source.root)!r}")
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(labels, dtype=torch.int64)

    xtr, ytr = stack(splits["train"], "train")
    xte, yte = stack(splits["test"], "test")
    return DecodedImages(classes, xtr, ytr, xte, yte, skipped)


def _save_cache(decoded: DecodedImages, path: Path, source: ImageSource) -> None:
    atomic_torch_save({"format": CACHE_FORMAT, "source": str(source.root), "classes": decoded.classes,
                     "train": {"images": decoded.train_images, "labels": decoded.train_labels},
                     "test": {"images": decoded.test_images, "labels": decoded.test_labels},
                     "skipped": decoded.skipped}, path)
    path.chmod(0o644)   # the temp file is private (mkstemp); a shared cache must be readable by other users


def _write_cache(decoded: DecodedImages, path: Path, source: ImageSource) -> None:
    """Save the cache; a location that cannot be written costs one warning (the run goes on without a cache)."""
    problem = None if writable_dir(path.parent) else "the folder is read-only"
    if problem is None:
        try:
            _save_cache(decoded, path, source)
        except OSError as err:
            problem = err.strerror or str(err)
    if problem is not None:
        warnings.warn(f"not caching the decoded dataset in {str(path.parent)!r} ({problem}); set data.cache_dir "
                      "to a writable folder, or data.cache=false", stacklevel=3)


def _load_cache(path: Path) -> DecodedImages | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if obj.get("format") != CACHE_FORMAT:
            return None
        return DecodedImages(list(obj["classes"]), obj["train"]["images"], obj["train"]["labels"],
                             obj["test"]["images"], obj["test"]["labels"], list(obj.get("skipped", [])))
    except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
        warnings.warn(f"ignoring unreadable dataset cache {str(path)!r} ({type(err).__name__}); decoding again",
                      stacklevel=3)
        return None


def load_decoded(source: ImageSource, cache_dir: str | Path | None = None, workers: int = 2,
                 strict: bool = False, rank: int = 0, world_size: int = 1, size: int | None = None,
                 cache: bool = True) -> DecodedImages:
    """The decoded images of ``source``, from the cache when present, otherwise decoded now and cached.

    Unreadable images are skipped with one warning that counts them (every load, also from the cache), or raise
    ``DataError`` naming the file when ``strict``. With ``torch.distributed`` initialised, rank 0 decodes and the
    other ranks wait for its cache file (and decode themselves when there is none).

    Args:
        source: the folder or archive.
        cache_dir: cache directory (None: ``user_cache_dir()``). One that cannot be written gives one warning and
            the images are decoded without a cache.
        workers: decoding processes.
        strict: raise on unreadable images instead of skipping them.
        rank, world_size: DDP position (only rank 0 decodes).
        size: resize every image on its own to ``size`` x ``size`` (``decode_source``).
        cache: read and write the cache at all.
    """
    path = cache_path(source, cache_dir, size)
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and rank != 0:
        torch.distributed.barrier()
    decoded = _load_cache(path) if cache and path.is_file() else None
    if decoded is None:
        decoded = decode_source(source, workers=workers, strict=strict, size=size)
        if cache and (rank == 0 or not distributed):
            _write_cache(decoded, path, source)
    if distributed and rank == 0:
        torch.distributed.barrier()
    if decoded.skipped:
        if strict:
            raise DataError(f"cannot read image {decoded.skipped[0]}")
        warnings.warn(f"skipped {len(decoded.skipped)} unreadable image(s) in {str(source.root)!r} "
                      f"(first: {decoded.skipped[0]}); set data.strict=true to stop on them", stacklevel=2)
    return decoded


# --- one image at a time (DataLoader) --------------------------------------------------------------------------

class FileImageDataset(torch.utils.data.Dataset):
    """Images read from a folder, zip or uncompressed tar one at a time, transformed by ``transform``.

    ``__getitem__`` returns ``(tensor, label)``, or ``(None, "name (error)")`` for an unreadable image so that the
    batch collation can drop it (see ``stimulative.data.LoaderBatches``).

    Args:
        source: the folder or archive.
        items: (reference, label) pairs from ``ImageSource.index()``.
        transform: PIL image -> tensor.
        names: tar offsets -> readable member name, for error messages.
    """

    def __init__(self, source: ImageSource, items: list[tuple[Any, int]], transform: Callable,
                 names: dict[Any, str] | None = None):
        self.root, self.kind = source.root, source.kind
        self.items, self.transform, self.names = items, transform, names or {}
        self._handle: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, ref: Any) -> bytes | str:
        if self.kind == "folder":
            return ref
        if self._pid != os.getpid():   # one handle per worker process
            self._handle = zipfile.ZipFile(self.root) if self.kind == "zip" else open(self.root, "rb")  # noqa: SIM115
            self._pid = os.getpid()
        if self.kind == "zip":
            return self._handle.read(ref)
        offset, size = ref
        self._handle.seek(offset)
        return self._handle.read(size)

    def _name(self, ref: Any) -> str:
        if self.kind == "folder":
            return ref
        return f"{self.root}:{ref}" if self.kind == "zip" else self.names.get(ref, f"{self.root}@{ref}")

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int | str]:
        ref, label = self.items[i]
        try:
            data = self._read(ref)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                img = img.convert("RGB")
        except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable image
            return None, f"{self._name(ref)} ({type(err).__name__}: {err})"
        return self.transform(img), label

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, -1
        return state


class TensorImageDataset(torch.utils.data.Dataset):
    """In-memory uint8 NCHW images served as PIL images through ``transform`` (for the DataLoader pipeline)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i].permute(1, 2, 0).numpy())
        return self.transform(img), int(self.labels[i])
