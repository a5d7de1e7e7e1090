"""Atomic, verified checkpoints.

File format: an 8-byte magic ``b"CKPT0001"``, the 64-character SHA-256 hex digest of the
payload, then the payload (``torch.save`` of the state dict). ``save_checkpoint`` writes a
temporary file in the same directory, flushes it to disk and renames it over the target, so a
crash or a failed write leaves the previous checkpoint intact. The file's mode follows the
process umask like any other file (``0o644`` under the usual umask ``0o022``), so a teammate
sharing the run directory can read it. ``load_checkpoint`` checks the
magic and the digest, so a truncated or corrupted file gives one clear :class:`CheckpointError`
instead of garbage weights.

For exact resume, save everything that determines the future of a run: model, optimizer and
scheduler state dicts, :func:`shared.parallel.seeding.capture_rng_state`, any :class:`RNGStreams`, the
step, and the data position (e.g. :meth:`shared.data.sampler.EpochSampler.state_dict`).
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

from shared.errors import UsageError

MAGIC = b"CKPT0001"
_DIGEST_LEN = 64


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated, corrupt or of another format."""


def _umask() -> int:
    """The process umask: from ``/proc/self/status`` on Linux (no side effect), else by setting
    it and restoring it at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode open() would have (0666 & ~umask)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(digest)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its digest."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path or start without --resume")
    data = path.read_bytes()
    header = len(MAGIC) + _DIGEST_LEN
    if len(data) < header or data[:len(MAGIC)] != MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint of this project (bad header, {len(data)} bytes); "
            f"it may be truncated or another format; delete it or point to another file")
    digest, payload = data[len(MAGIC):header], data[header:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(
            f"{path} is corrupt or truncated (checksum mismatch over {len(payload)} payload "
            f"bytes); delete it and resume from an earlier checkpoint, or restart")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path} passed its checksum but could not be unpickled: {exc}") from exc
