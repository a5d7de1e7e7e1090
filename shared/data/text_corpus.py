"""Token corpora for the language-model papers (tensor_parallel, seqpar).

Default: a byte-level corpus made of the Python standard library's own ``.py`` source files,
which ship with every Python: real text that no one here wrote, nothing to download. Files are
read in sorted order of their relative paths, so the corpus is deterministic for a given Python
version; the last ``val_fraction`` of the bytes is the validation split.

Real data, by path:

* a directory with ``train.bin`` and ``val.bin`` (nanoGPT layout: flat ``uint16`` token ids);
* a single ``.bin`` file of ``uint16`` tokens (split by ``val_fraction``);
* a directory of text files (``.txt``, ``.md``, ``.py``, ``.rst``, ``.json``, ``.csv``; read in
  sorted order) or one text file: bytes, vocabulary 256.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".csv")
DEFAULT_MAX_BYTES = 8 * 2 ** 20


class CorpusError(ValueError):
    """Missing or malformed corpus data."""


@dataclass
class Corpus:
    """Token ids of a train and a validation split.

    Attributes:
        train, val: 1-D integer tensors of token ids (uint8 for bytes, int32 for .bin tokens).
        vocab_size: ids lie in ``[0, vocab_size)``.
        source: a human-readable description of where the tokens came from.
    """
    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    source: str

    def tokens(self, split: str) -> torch.Tensor:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
        return self.train if split == "train" else self.val

    def num_windows(self, split: str, seq_len: int) -> int:
        """Number of valid start positions of a (seq_len + 1)-token window."""
        return max(0, self.tokens(split).numel() - seq_len)

    def lm_batch(self, split: str, starts: torch.Tensor, seq_len: int):
        """Inputs ``x`` and next-token targets ``y``, each ``[B, seq_len]`` int64."""
        tok = self.tokens(split)
        if self.num_windows(split, seq_len) <= 0:
            raise CorpusError(f"the {split} split has {tok.numel()} tokens, too few for windows "
                              f"of {seq_len + 1}; use a shorter sequence or more data")
        offsets = torch.arange(seq_len + 1)
        idx = starts.long().view(-1, 1) + offsets.view(1, -1)      # [B, L+1]
        win = tok[idx].long()
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()


def _stdlib_bytes(max_bytes: int) -> tuple[bytes, str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "test" not in p.parts
                   and "tests" not in p.parts)
    chunks, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if not chunks:
        raise CorpusError(f"found no Python source files under {root} for the default corpus; "
                          f"pass a data path instead")
    blob = b"\n".join(chunks)[:max_bytes]
    return blob, f"Python {sysconfig.get_python_version()} standard library source ({len(blob)} bytes)"


def _split(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    n_val = max(1, int(tokens.numel() * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


def _read_bin(path: Path) -> torch.Tensor:
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise CorpusError(f"{path} should hold uint16 token ids (nanoGPT layout), but its size "
                          f"is {size} bytes (empty or odd)")
    arr = np.fromfile(path, dtype=np.uint16)
    return torch.from_numpy(arr.astype(np.int32))


def _bytes_tensor(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def load_corpus(data: str | Path | None = None, val_fraction: float = 0.1,
                max_bytes: int | None = None) -> Corpus:
    """Load the default corpus (``data=None``) or the corpus at ``data`` (see module docstring).

    ``max_bytes`` caps the default or text corpora (default 8 MiB for the standard library).
    """
    if data is None:
        blob, source = _stdlib_bytes(max_bytes or DEFAULT_MAX_BYTES)
        train, val = _split(_bytes_tensor(blob), val_fraction)
        return Corpus(train, val, 256, source)
    path = Path(data)
    if not path.exists():
        raise CorpusError(f"no corpus at {path}: expected a directory with train.bin/val.bin, "
                          f"a .bin token file, a directory of text files or a text file")
    if path.is_dir() and (path / "train.bin").is_file():
        if not (path / "val.bin").is_file():
            raise CorpusError(f"{path} has train.bin but no val.bin (nanoGPT layout needs both)")
        train, val = _read_bin(path / "train.bin"), _read_bin(path / "val.bin")
        vocab = int(max(train.max(), val.max())) + 1
        return Corpus(train, val, vocab, f"nanoGPT token files in {path}")
    if path.is_file() and path.suffix == ".bin":
        tokens = _read_bin(path)
        train, val = _split(tokens, val_fraction)
        return Corpus(train, val, int(tokens.max()) + 1, f"token file {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"{path} holds no train.bin/val.bin and no text files "
                              f"({', '.join(TEXT_SUFFIXES)})")
        blob = b"\n".join(p.read_bytes() for p in files)
        source = f"{len(files)} text files in {path}"
    else:
        blob = path.read_bytes()
        source = f"text file {path}"
    if max_bytes:
        blob = blob[:max_bytes]
    if len(blob) < 16:
        raise CorpusError(f"{source} has only {len(blob)} bytes; a corpus needs more text")
    train, val = _split(_bytes_tensor(blob), val_fraction)
    return Corpus(train, val, 256, f"{source} ({len(blob)} bytes)")
