"""Token corpora for the language-model papers (tensor_parallel, seqpar), in bounded memory.

Default: a byte-level corpus made of the Python standard library's own ``.py`` source files,
which ship with every Python: real text that no one here wrote, nothing to download. Files are
read in sorted order of their relative paths, so the corpus is deterministic for a given Python
version; the last ``val_fraction`` of the bytes is the validation split.

Real data, by path:

* a directory with ``train.bin`` and ``val.bin`` (nanoGPT layout: flat ``uint16`` token ids);
* a single ``.bin`` file of ``uint16`` tokens (split by ``val_fraction``);
* a directory of text files (read in sorted order of their paths, hidden files and directories
  left out) or one text file: bytes, vocabulary 256.

Memory and reads are bounded:

* ``.bin`` token files are memory-mapped (``np.memmap``, copy-on-write), never loaded: the
  tokens of a batch are paged in when :meth:`Corpus.lm_batch` indexes them. ``max_bytes`` does
  not apply to them. The vocabulary size is the largest id + 1, found by one streaming pass.
* text is streamed file by file and each file is read only up to what ``max_bytes`` still
  needs; files after the cap are never opened. Any regular file is text when the bytes taken
  from it decode as UTF-8 and hold no NUL byte, whatever its extension (a ``LICENSE``, a
  ``Makefile``); other files are binary and skipped, and ``Corpus.source`` says how many.
"""
from __future__ import annotations

import codecs
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.errors import UsageError

DEFAULT_MAX_BYTES = 8 * 2 ** 20
_SEPARATOR = b"\n"              # between two files of a text corpus
_VOCAB_SCAN_TOKENS = 1 << 24   # tokens per step of the streaming max over a .bin file


class CorpusError(UsageError):
    """Missing or malformed corpus data; the message names the path, what was expected and what
    was found."""


@dataclass
class Corpus:
    """Token ids of a train and a validation split.

    Attributes:
        train, val: 1-D integer tensors of token ids: uint8 for text bytes; uint16 for ``.bin``
            tokens, backed by a memory map of the file (copy-on-write: the file is never written).
        vocab_size: ids lie in ``[0, vocab_size)``.
        source: a human-readable description of where the tokens came from.
    """
    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    source: str

    def tokens(self, split: str) -> torch.Tensor:
        """The token tensor of ``split`` (``"train"`` or ``"val"``)."""
        if split not in ("train", "val"):
            raise CorpusError(f"split must be 'train' or 'val'; got {split!r}")
        return self.train if split == "train" else self.val

    def num_windows(self, split: str, seq_len: int) -> int:
        """Number of valid start positions of a (seq_len + 1)-token window."""
        return max(0, self.tokens(split).numel() - seq_len)

    def lm_batch(self, split: str, starts: torch.Tensor, seq_len: int):
        """Inputs ``x`` and next-token targets ``y``, each ``[B, seq_len]`` int64."""
        tok = self.tokens(split)
        if self.num_windows(split, seq_len) <= 0:
            raise CorpusError(f"the {split} split of {self.source} has {tok.numel()} tokens, too "
                              f"few for windows of {seq_len + 1}; use a shorter sequence or more data")
        offsets = torch.arange(seq_len + 1)
        idx = starts.long().view(-1, 1) + offsets.view(1, -1)      # [B, L+1]
        win = tok[idx].long()
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()


# ---- text, streamed --------------------------------------------------------------------------

def _read_text_prefix(path: Path, limit: int | None) -> bytes | None:
    """At most ``limit`` bytes of ``path`` (all when None), or None when they are not UTF-8 text
    (invalid UTF-8 or a NUL byte). A multi-byte character cut by the limit is still text."""
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    if b"\x00" in data:
        return None
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=limit is None or len(data) < limit)
    except UnicodeDecodeError:
        return None
    return data


def _stream_text(files, max_bytes: int | None) -> tuple[bytes, int, int]:
    """The files' bytes joined by newlines and cut to ``max_bytes``, reading no file further than
    needed and opening none after the cap. Returns (blob, text files used, binary files skipped)."""
    chunks, total, used, skipped = [], 0, 0, 0
    for path in files:
        if max_bytes is not None and total >= max_bytes:
            break
        if chunks:
            sep = _SEPARATOR if max_bytes is None else _SEPARATOR[:max_bytes - total]
        else:
            sep = b""
        limit = None if max_bytes is None else max_bytes - total - len(sep)
        if limit == 0:  # the cap falls right after the separator
            chunks.append(sep)
            break
        try:
            data = _read_text_prefix(path, limit)
        except OSError:
            skipped += 1
            continue
        if data is None:
            skipped += 1
            continue
        if sep:
            chunks.append(sep)
        chunks.append(data)
        total += len(sep) + len(data)
        used += 1
    return b"".join(chunks), used, skipped


def _text_files(root: Path) -> list[Path]:
    """Regular files under ``root`` in sorted path order, hidden files and directories left out."""
    return sorted(p for p in root.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts)
                  and p.is_file())


def _stdlib_bytes(max_bytes: int) -> tuple[bytes, str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "test" not in p.parts
                   and "tests" not in p.parts)
    blob, used, _ = _stream_text(files, max_bytes)
    if not used:
        raise CorpusError(f"found no Python source files under {root} for the default corpus "
                          f"(expected *.py files); pass a data path instead")
    return blob, f"Python {sysconfig.get_python_version()} standard library source ({len(blob)} bytes)"


def _bytes_tensor(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


# ---- tokens, memory-mapped -------------------------------------------------------------------

def _map_bin(path: Path) -> torch.Tensor:
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise CorpusError(f"{path} should hold uint16 token ids (nanoGPT layout, an even number "
                          f"of bytes), but its size is {size} bytes (empty or odd)")
    # copy-on-write: torch gets a writable array (no warning) and a stray write never reaches disk
    return torch.from_numpy(np.memmap(path, dtype=np.uint16, mode="c"))


def _max_token(tokens: torch.Tensor) -> int:
    """Largest id of a uint16 token tensor, streamed in chunks (bounded memory)."""
    arr = tokens.numpy()
    return max(int(arr[i:i + _VOCAB_SCAN_TOKENS].max())
               for i in range(0, arr.shape[0], _VOCAB_SCAN_TOKENS))


def _split(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"val_fraction must be in (0, 1); got {val_fraction}")
    n_val = max(1, int(tokens.numel() * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


def load_corpus(data: str | Path | None = None, val_fraction: float = 0.1,
                max_bytes: int | None = None) -> Corpus:
    """Load the default corpus (``data=None``) or the corpus at ``data`` (see module docstring).

    ``max_bytes`` caps the default or text corpora (default 8 MiB for the standard library, no
    cap for a text path); only that many bytes are read. ``.bin`` tokens are memory-mapped.
    """
    if max_bytes is not None and max_bytes < 1:
        raise CorpusError(f"max_bytes must be a positive number of bytes; got {max_bytes}")
    if data is None:
        blob, source = _stdlib_bytes(max_bytes or DEFAULT_MAX_BYTES)
        train, val = _split(_bytes_tensor(blob), val_fraction)
        return Corpus(train, val, 256, source)
    path = Path(data)
    if not path.exists():
        raise CorpusError(f"no corpus at {path}: expected a directory with train.bin/val.bin, "
                          f"a .bin token file, a directory of text files or a text file; "
                          f"found nothing at that path")
    if path.is_dir() and (path / "train.bin").is_file():
        if not (path / "val.bin").is_file():
            raise CorpusError(f"{path} has train.bin but no val.bin; the nanoGPT layout "
                              f"expects both")
        train, val = _map_bin(path / "train.bin"), _map_bin(path / "val.bin")
        vocab = max(_max_token(train), _max_token(val)) + 1
        return Corpus(train, val, vocab, f"nanoGPT token files in {path} (memory-mapped)")
    if path.is_file() and path.suffix == ".bin":
        tokens = _map_bin(path)
        train, val = _split(tokens, val_fraction)
        return Corpus(train, val, _max_token(tokens) + 1, f"token file {path} (memory-mapped)")
    if path.is_dir():
        files = _text_files(path)
        blob, used, skipped = _stream_text(files, max_bytes)
        if not used:
            raise CorpusError(
                f"{path} holds no train.bin/val.bin and no text files: expected UTF-8 text "
                f"files or nanoGPT token files, found {len(files)} files"
                + (f", all binary (not UTF-8 or with NUL bytes)" if files else ""))
        source = f"{used} text files in {path}" + (
            f", {skipped} binary files skipped" if skipped else "")
    elif path.is_file():
        blob = _read_text_prefix(path, max_bytes)
        if blob is None:
            raise CorpusError(f"{path} is not a text file: expected UTF-8 text (or a .bin file "
                              f"of uint16 tokens), found bytes that are not UTF-8 or hold NULs")
        source = f"text file {path}"
    else:
        raise CorpusError(f"{path} is neither a regular file nor a directory; expected a "
                          f"corpus file or directory")
    if len(blob) < 16:
        raise CorpusError(f"{source} has only {len(blob)} bytes; a corpus needs at least 16 "
                          f"bytes of text")
    train, val = _split(_bytes_tensor(blob), val_fraction)
    return Corpus(train, val, 256, f"{source} ({len(blob)} bytes)")
