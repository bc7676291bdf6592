"""From a GGUF file (llama.cpp's format, quantized or not) to a ``save_pretrained`` directory an LM run can use.

``transformers`` loads a GGUF with ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` and
de-quantizes it to float32, but refuses to ``save_pretrained`` the result ("quantized with gguf and is not
serializable"). ``convert_gguf`` copies its state dict into a fresh model of the same class and config (every key
must match), saves that and the tokenizer the file carries (``AutoTokenizer.from_pretrained(folder,
gguf_file=name)``), and writes ``stimulative_convert.json`` (the source file, its sha256, its tensor types, the
library versions). The directory appears at once (written beside it, then renamed) or not at all::

    from stimulative.lm.gguf import convert_gguf
    out = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
    # AutoModelForCausalLM.from_pretrained("smollm2"), or an LM run with model.pretrained=smollm2

``cached_gguf`` converts a file once into the GGUF cache (``gguf_cache_root()``: ``$STIMULATIVE_GGUF_CACHE``,
else ``$XDG_CACHE_HOME/stimulative/gguf``, else ``~/.cache/stimulative/gguf``), one directory per file content
(``<file stem>-<first 16 hex digits of its sha256>``), and reuses it afterwards: that is how ``model.pretrained``
accepts a ``.gguf`` file. The command line is ``stimulative convert MODEL.gguf -o DIR``.

What cannot be converted is a ``GGUFError`` (a ``ValueError``: one line, no traceback from the CLI) naming the
problem: a file that is not GGUF, an architecture elastic depth cannot cut (``llama`` and ``gpt2`` only), a tensor
type ``gguf`` cannot de-quantize, an existing non-empty output directory without ``overwrite``. A missing ``gguf``
package is the ``pip install "stimulative[transformers]"`` line (``stimulative._extras.require``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._extras import require
from .config import FAMILIES

__all__ = ["CONVERT_INFO", "GGUFError", "GGUFInfo", "cached_gguf", "convert_gguf", "gguf_cache_root", "inspect_gguf",
           "is_gguf", "sha256_file"]

CONVERT_INFO = "stimulative_convert.json"  # written into every converted directory
FORMAT = "stimulative-convert-v1"
_MAGIC = b"GGUF"
_FEATURE = "converting a GGUF file"


class GGUFError(ValueError):
    """A GGUF file (or an output directory) that cannot be converted; the message is one line naming why."""


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says, read without de-quantizing anything (``inspect_gguf``)."""

    path: Path
    architecture: str                   # general.architecture: llama, gpt2, ...
    name: str | None                    # general.name
    tensor_types: dict[str, int] = field(default_factory=dict)   # ggml type name -> tensor count
    has_tokenizer: bool = False         # tokenizer.ggml.model present


def is_gguf(path: str | Path) -> bool:
    """True when ``path`` is a file that starts with the GGUF magic bytes (whatever its suffix)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == _MAGIC


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file's bytes (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dequantizable(gguf: Any, qtype: Any) -> bool:
    """Whether ``gguf.dequantize`` (what ``transformers`` uses for llama and gpt2) handles ``qtype``: one block of
    zeros is de-quantized, so the answer is the installed ``gguf``'s, not a list kept here."""
    import numpy as np

    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    try:
        gguf.dequantize(np.zeros(type_size, dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF file's header and check that ``convert_gguf`` can convert it (nothing is de-quantized).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        GGUFError: not a GGUF file, an architecture other than ``llama``/``gpt2`` (``stimulative.lm.config.FAMILIES``),
            or a tensor type the installed ``gguf`` cannot de-quantize.
        MissingExtraError: the ``gguf`` package is not installed.

    Example:
        >>> inspect_gguf("SmolLM2-135M-Instruct.Q4_1.gguf").tensor_types  # doctest: +SKIP
        {'Q8_0': 1, 'F32': 61, 'Q4_1': 210}
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    if not is_gguf(path):
        raise GGUFError(f"{str(path)!r} is not a GGUF file (it does not start with the GGUF magic bytes)")
    gguf = require("gguf", "transformers", _FEATURE)
    try:
        reader = gguf.GGUFReader(str(path))
        fields = reader.fields
        arch_field = fields.get("general.architecture")
        architecture = str(arch_field.contents()) if arch_field is not None else None
        name_field = fields.get("general.name")
        name = str(name_field.contents()) if name_field is not None else None
        tensors = [(t.name, t.tensor_type) for t in reader.tensors]
    except (ValueError, KeyError, IndexError, OSError) as err:  # a truncated or corrupt header
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GGUFError(f"{str(path)!r} is not a readable GGUF file ({first})") from err
    if architecture is None:
        raise GGUFError(f"{str(path)!r} has no general.architecture in its metadata")
    if architecture not in FAMILIES:
        raise GGUFError(f"{str(path)!r} is a {architecture!r} model, which elastic depth cannot cut; supported "
                        f"architectures: {', '.join(FAMILIES)}")
    counts = Counter(qtype.name for _, qtype in tensors)
    bad = sorted({qtype for _, qtype in tensors if not _dequantizable(gguf, qtype)}, key=lambda q: q.name)
    if bad:
        names = ", ".join(f"{q.name} ({counts[q.name]} tensors, e.g. {next(n for n, t in tensors if t == q)})"
                          for q in bad)
        raise GGUFError(f"{str(path)!r} holds tensors of quantization type {names} that gguf "
                        f"{_version('gguf')} cannot de-quantize; re-quantize it (e.g. Q8_0, Q4_K, F16) or "
                        "convert from the original checkpoint")
    return GGUFInfo(path, architecture, name, dict(counts), "tokenizer.ggml.model" in fields)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GGUFError(f"output {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GGUFError(f"output directory {str(out)!r} exists and is not empty (pass overwrite=True / --overwrite "
                        "to replace it)")


def _load(info: GGUFInfo) -> tuple[Any, Any]:
    """The de-quantized float32 model and the tokenizer (None when the file has none) of a checked GGUF."""
    import torch

    transformers = require("transformers", "transformers", _FEATURE)
    require("accelerate", "accelerate", f"{_FEATURE} (transformers loads GGUF files with accelerate)")
    folder, name = str(info.path.parent), info.path.name
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                  local_files_only=True)
        tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True) \
            if info.has_tokenizer else None
    except (ValueError, NotImplementedError, KeyError) as err:  # transformers' own refusals, as one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GGUFError(f"transformers {transformers.__version__} cannot load {str(info.path)!r}: {first}") from err
    family = getattr(model.config, "model_type", None)
    if family not in FAMILIES:  # e.g. a llama file named "mistral", loaded as a MistralForCausalLM
        raise GGUFError(f"{str(info.path)!r} loads as a {family!r} model ({type(model).__name__}), which elastic "
                        f"depth cannot cut; supported: {', '.join(FAMILIES)}")
    return model, tok


def _plain_copy(model: Any) -> Any:
    """A fresh model of ``model``'s class and config (minus the GGUF quantization entry) holding its weights;
    every key of the two state dicts must match."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(model.config).from_dict(config_dict)
    fresh = type(model)(config)
    state = model.state_dict()
    try:
        result = fresh.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise GGUFError(f"the GGUF weights do not fit a fresh {type(model).__name__}: "
                        f"{str(err).strip().splitlines()[-1].strip()}") from err
    if result.missing_keys or result.unexpected_keys:
        raise GGUFError(f"the GGUF weights do not match a fresh {type(model).__name__}: missing "
                        f"{sorted(result.missing_keys)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}")
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = model.generation_config
    return fresh.float().eval()


def convert_gguf(path: str | Path, out_dir: str | Path, overwrite: bool = False, sha256: str | None = None) -> Path:
    """De-quantize a GGUF file into a ``save_pretrained`` directory: model (float32 safetensors), tokenizer and
    ``stimulative_convert.json``.

    The directory is written beside ``out_dir`` under a temporary name and renamed into place, so ``out_dir`` is
    either complete or untouched.

    Args:
        path: a GGUF file of a ``llama`` or ``gpt2`` model (any tensor type the installed ``gguf`` de-quantizes).
        out_dir: the directory to write; it must not exist or be empty, unless ``overwrite``.
        overwrite: replace an existing ``out_dir``.
        sha256: the file's sha256 if already known (it is computed otherwise).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileNotFoundError, GGUFError, MissingExtraError: see ``inspect_gguf``; also a non-empty ``out_dir``.

    Example:
        >>> out = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "/tmp/smollm2")  # doctest: +SKIP
        >>> transformers.AutoModelForCausalLM.from_pretrained(out)  # doctest: +SKIP
    """
    info = inspect_gguf(path)
    out = Path(out_dir).expanduser()
    _check_out_dir(out, overwrite)
    model, tok = _load(info)
    plain = _plain_copy(model)
    del model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its mode 0700 would make DIR private
    try:
        plain.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        record = {"format": FORMAT, "source": str(info.path.resolve()), "sha256": sha256 or sha256_file(info.path),
                  "size_bytes": info.path.stat().st_size, "architecture": info.architecture, "name": info.name,
                  "quantization": dict(sorted(info.tensor_types.items())), "model_class": type(plain).__name__,
                  "parameters": sum(p.numel() for p in plain.parameters()), "tokenizer": tok is not None,
                  "transformers": _version("transformers"), "gguf": _version("gguf"), "torch": _version("torch"),
                  "stimulative": _version("stimulative")}
        (tmp / CONVERT_INFO).write_text(json.dumps(record, indent=2) + "\n")
        _check_out_dir(out, overwrite)  # again: another process may have written it meanwhile
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def gguf_cache_root() -> Path:
    """Where ``cached_gguf`` keeps converted files: ``$STIMULATIVE_GGUF_CACHE``, else
    ``$XDG_CACHE_HOME/stimulative/gguf``, else ``~/.cache/stimulative/gguf``."""
    if os.environ.get("STIMULATIVE_GGUF_CACHE"):
        return Path(os.environ["STIMULATIVE_GGUF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "stimulative" / "gguf"


def cached_gguf(path: str | Path, cache_root: str | Path | None = None) -> tuple[Path, bool]:
    """The converted directory of a GGUF file in the cache, converting it only the first time.

    The cache entry is ``<cache_root>/<stem>-<sha256[:16]>``; it is reused when its ``stimulative_convert.json``
    records the same sha256 (so an edited file is converted again).

    Args:
        path: the GGUF file.
        cache_root: default ``gguf_cache_root()``.

    Returns:
        ``(directory, converted)``: ``converted`` is False when an earlier conversion was reused.

    Example:
        >>> out, converted = cached_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    inspect_gguf(path)  # the clear errors first, before hashing
    digest = sha256_file(path)
    root = Path(cache_root).expanduser() if cache_root is not None else gguf_cache_root()
    out = root / f"{path.stem}-{digest[:16]}"
    record = out / CONVERT_INFO
    if record.is_file() and (out / "config.json").is_file():
        try:
            if json.loads(record.read_text()).get("sha256") == digest:
                return out, False
        except (ValueError, OSError):
            pass  # a damaged record: convert again
    return convert_gguf(path, out, overwrite=True, sha256=digest), True
