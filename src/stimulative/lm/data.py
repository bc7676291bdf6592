"""Offline LM data: a byte-level tokenizer, text files split into train/val by file, packed fixed-length blocks.

``data.root`` may be a text file (its last ``val_fraction`` of bytes is the validation split), a folder of text
files (every file that reads as UTF-8 text, with or without an extension; binary files are skipped and counted;
split into train/val by file, by a stable hash of the relative path: adding files never moves the
others) or a folder with ``train/`` and ``val/`` subfolders. ``stdlib_files()`` is a demo corpus that needs
nothing outside the machine: the ``.py`` sources of the running Python's standard library.

Example:
    >>> from stimulative.lm import ByteTokenizer, PackedBlocks, corpus_files, encode_files, stdlib_files
    >>> tok = ByteTokenizer()
    >>> tok.decode(tok.encode("héllo"))
    'héllo'
    >>> splits = corpus_files(stdlib_files() / "json")
    >>> train = PackedBlocks(encode_files(splits["train"], tok), block_size=64)
    >>> train[0].shape
    torch.Size([65])
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from .._extras import require

if TYPE_CHECKING:
    from .config import LMConfig

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "corpus_files", "is_text_file", "split_by_file", "encode_files", "corpus_tokens",
           "PackedBlocks", "stdlib_files", "TEXT_SUFFIXES", "LMData", "load_lm_data"]

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".json", ".c", ".h", ".html", ".csv", ".toml", ".yaml", ".yml")


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus an end-of-text token 256 between documents (vocabulary 257)."""

    vocab_size = 257
    eos_token_id = 256

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ids + [self.eos_token_id] if add_eos else ids

    def encode_bytes(self, data: bytes, add_eos: bool = False) -> torch.Tensor:
        """Fast path for files: a 1-D int16 tensor of the bytes (and the EOS token)."""
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int16) if data \
            else torch.empty(0, dtype=torch.int16)
        return torch.cat([ids, torch.tensor([self.eos_token_id], dtype=torch.int16)]) if add_eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eos=256)"


class HFTokenizer:
    """A local ``transformers`` tokenizer directory behind the ``ByteTokenizer`` interface."""

    def __init__(self, path: str | Path):
        auto_tokenizer = require("transformers", "transformers", "a tokenizer directory (lm data.tokenizer)").AutoTokenizer
        self.tokenizer = auto_tokenizer.from_pretrained(str(path), local_files_only=True)
        self.vocab_size = len(self.tokenizer)
        eos = self.tokenizer.eos_token_id
        self.eos_token_id = int(eos) if eos is not None else None

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids + [self.eos_token_id] if add_eos and self.eos_token_id is not None else ids

    def encode_bytes(self, data: bytes, add_eos: bool = False) -> torch.Tensor:
        return torch.tensor(self.encode(data.decode("utf-8", errors="replace"), add_eos), dtype=torch.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


def load_tokenizer(spec: str | Path | None = "byte") -> ByteTokenizer | HFTokenizer:
    """``"byte"``/None: ``ByteTokenizer``; otherwise a local ``transformers`` tokenizer directory."""
    if spec is None or str(spec) == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer {str(spec)!r} is neither 'byte' nor a local tokenizer directory")
    return HFTokenizer(path)


def stdlib_files() -> Path:
    """The folder of the running Python's standard library sources (``corpus_files`` skips site-packages)."""
    return Path(sysconfig.get_paths()["stdlib"])


_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git"}


def is_text_file(path: str | Path, sniff: int = 8192) -> bool:
    """True when the file's first ``sniff`` bytes are UTF-8 text (no NUL byte; a multi-byte character cut at
    the end of the sample is allowed). Empty files are not text."""
    with open(path, "rb") as f:
        head = f.read(sniff)
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        # only a character cut by the sample's end is forgiven (a whole file must decode)
        return len(head) == sniff and err.start >= len(head) - 3 and err.reason == "unexpected end of data"
    return True


def _text_files(folder: Path, suffixes: Sequence[str] | None, skipped: list[Path]) -> list[Path]:
    """Files under ``folder`` with one of ``suffixes``, or (``None``) every file that reads as UTF-8 text; the
    others (binary files) are appended to ``skipped``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]  # prune: site-packages can be huge
        for name in filenames:
            path = Path(dirpath) / name
            if suffixes is not None:
                if path.suffix in suffixes:
                    found.append(path)
            elif path.is_file() and is_text_file(path):
                found.append(path)
            else:
                skipped.append(path)
    return sorted(found)


def _hash_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def split_by_file(files: Sequence[Path], root: Path, val_fraction: float = 0.1) -> dict[str, list[Path]]:
    """Train/val split by file: a file is in val when a stable hash of its path relative to root is below
    ``val_fraction`` (at least one val and one train file when there are two or more)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    keyed = sorted(((_hash_fraction(p.relative_to(root).as_posix()), p) for p in files), key=lambda t: t[0])
    val = [p for h, p in keyed if h < val_fraction]
    if not val and len(keyed) >= 2:
        val = [keyed[0][1]]
    if len(val) == len(keyed) and len(keyed) >= 2:
        val = val[:-1]
    chosen = set(val)
    return {"train": sorted(p for p in files if p not in chosen), "val": sorted(val)}


def corpus_files(root: str | Path, val_fraction: float = 0.1, suffixes: Sequence[str] | None = None
                 ) -> dict[str, Any]:
    """The train/val files of ``root`` (see the module docstring): ``{"train": [...], "val": [...], "skipped":
    n}`` (``n`` binary files left out).

    A folder's text files are every file that reads as UTF-8 text, with or without an extension (``LICENSE``,
    ``.jsonl``, ``.tex``, sources of any language); ``suffixes`` restricts them to those endings instead (the
    standard-library corpus uses ``TEXT_SUFFIXES``). For a single text file both lists hold that file and
    ``"val_bytes"`` says where validation starts (``encode_files`` reads the matching part).
    """
    root = Path(root)
    if root.is_file():
        size = root.stat().st_size
        return {"train": [root], "val": [root], "val_bytes": int(size * (1 - val_fraction)), "skipped": 0}
    if not root.is_dir():
        raise FileNotFoundError(f"data root {str(root)!r} is neither a text file nor a folder")
    what = f"text files ({', '.join(suffixes)})" if suffixes is not None else "UTF-8 text files"
    skipped: list[Path] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        splits: dict[str, Any] = {"train": _text_files(root / "train", suffixes, skipped),
                                  "val": _text_files(root / "val", suffixes, skipped)}
    else:
        files = _text_files(root, suffixes, skipped)
        if len(files) < 2:
            extra = f" ({len(skipped)} binary or empty files skipped)" if skipped else ""
            raise ValueError(f"{root} has {len(files)} {what}{extra}; a folder needs at least two to split by "
                             "file (or give a single text file, or train/ and val/ subfolders)")
        splits = split_by_file(files, root, val_fraction)
    for name, files in list(splits.items()):
        if not files:
            raise ValueError(f"data root {root} has no {name} {what}")
    splits["skipped"] = len(skipped)
    return splits


def encode_files(files: Sequence[Path], tokenizer: ByteTokenizer | HFTokenizer | None = None, *,
                 start_byte: int = 0, end_byte: int | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """All files' tokens concatenated, an end-of-text token after each file: a 1-D tensor.

    ``start_byte``/``end_byte`` cut every file (for the single-file split); ``max_bytes`` stops after that
    many bytes in total (quick runs).
    """
    tokenizer = tokenizer or ByteTokenizer()
    parts, total = [], 0
    for path in files:
        data = Path(path).read_bytes()[start_byte:end_byte]
        if max_bytes is not None:
            data = data[:max(0, max_bytes - total)]
        if not data:
            continue
        parts.append(tokenizer.encode_bytes(data, add_eos=True))
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    if not parts:
        raise ValueError("no text in the given files")
    return torch.cat(parts)


def corpus_tokens(root: str | Path, tokenizer: ByteTokenizer | HFTokenizer | None = None,
                  val_fraction: float = 0.1, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """``{"train": tokens, "val": tokens}`` of a data root (file, folder, or train/ and val/ subfolders)."""
    splits = corpus_files(root, val_fraction, TEXT_SUFFIXES if Path(root) == stdlib_files() else None)
    cut = splits.get("val_bytes")
    if cut is not None:
        return {"train": encode_files(splits["train"], tokenizer, end_byte=cut, max_bytes=max_bytes),
                "val": encode_files(splits["val"], tokenizer, start_byte=cut, max_bytes=max_bytes)}
    return {name: encode_files(splits[name], tokenizer, max_bytes=max_bytes) for name in ("train", "val")}


class PackedBlocks(Dataset):
    """Fixed-length blocks of a token stream: item i is ``tokens[i*T : i*T + T + 1]`` (T = ``block_size``),
    i.e. T next-token predictions; consecutive blocks share one token, every token is a target once. The
    stream's tail shorter than a block is dropped. Items are int64 (embedding indices)."""

    def __init__(self, tokens: torch.Tensor, block_size: int):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.tokens = tokens
        self.block_size = block_size
        self.num_blocks = max(0, (len(tokens) - 1) // block_size)
        if self.num_blocks == 0:
            raise ValueError(f"{len(tokens)} tokens do not fill one block of {block_size} + 1")

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.num_blocks <= index < self.num_blocks:
            raise IndexError(index)
        start = (index % self.num_blocks) * self.block_size
        return self.tokens[start:start + self.block_size + 1].long()


def _split_files(cfg: LMConfig) -> dict[str, Any]:
    root = cfg.data.root
    if root in (None, "stdlib"):  # the demo corpus: its source and text files, as the benchmarks were made
        return corpus_files(stdlib_files(), cfg.data.val_fraction, TEXT_SUFFIXES)
    splits = corpus_files(Path(root).expanduser(), cfg.data.val_fraction)
    if splits["skipped"]:
        print(f"data: {splits['skipped']} binary or empty files under {root} skipped")
    return splits


@dataclass
class LMData:
    """The token streams of a run: ``train`` (1-D, may be None when only validating) and ``val``."""

    train: torch.Tensor | None
    val: torch.Tensor
    tokenizer: Any
    context: int
    steps_per_epoch: int = 1  # steps of batch_size blocks that cover the training tokens once

    def train_batch(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """The ``(batch_size, context + 1)`` int64 batch of optimizer step ``step``: random windows of the
        training stream from a generator seeded with ``(seed, step)`` (the same batch on resume)."""
        t = self.context + 1
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train) - t + 1, (batch_size,), generator=g)
        return self.train[starts[:, None] + torch.arange(t)].long()

    def fingerprint(self) -> dict[str, Any]:
        """The identity of the training tokens (their count and sha1, and the vocabulary size), recorded in every
        checkpoint: a resume on other data (other files, another tokenizer or split) is refused."""
        tokens = self.train.contiguous()
        digest = hashlib.sha1(tokens.numpy().tobytes()).hexdigest()
        return {"kind": "tokens", "tokens": int(tokens.numel()), "vocab_size": int(self.tokenizer.vocab_size),
                "sha1": digest}

    def val_batches(self, num_blocks: int = 0, batch_size: int = 32) -> list[torch.Tensor]:
        """``num_blocks`` (0 = all) validation blocks evenly spaced over the val stream, in batches."""
        blocks = PackedBlocks(self.val, self.context)
        n = len(blocks)
        idx = range(n) if not num_blocks or num_blocks >= n else \
            sorted({round(i * (n - 1) / max(num_blocks - 1, 1)) for i in range(num_blocks)})
        rows = [blocks[i] for i in idx]
        return [torch.stack(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def load_lm_data(cfg: LMConfig, train: bool = True) -> LMData:
    """Tokenize ``cfg.data`` (``train=False``: the validation split only)."""
    tok = load_tokenizer(cfg.data.tokenizer)
    splits = _split_files(cfg)
    cut = splits.get("val_bytes")
    limit = cfg.data.max_bytes or None
    val = encode_files(splits["val"], tok, start_byte=cut or 0, max_bytes=limit)
    tr = encode_files(splits["train"], tok, end_byte=cut, max_bytes=limit) if train else None
    need = cfg.model.context + 2
    if tr is not None and len(tr) < need or len(val) < need:
        raise ValueError(f"the data of {cfg.data.root or 'stdlib'} is shorter than one block of {need} tokens "
                         "(lower model.context or add text)")
    spe = max(1, len(tr) // (cfg.batch_size * cfg.model.context)) if tr is not None else 1
    return LMData(tr, val, tok, cfg.model.context, spe)
