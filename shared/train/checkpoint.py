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

import contextlib
import hashlib
import io
import os
import tempfile
import warnings
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


# ----------------------------------------------------------------------------------------------
# sharded checkpoints (torch.distributed.checkpoint)

SHARDS_PREFIX = "shards-step"
_DCP_FILES = (".metadata",)          # plus every "*.distcp": the files the DCP writer creates


def save_sharded(state: dict, run_dir, step: int, group, device="cpu") -> str:
    """Write ``state`` (tensors and DTensors) with ``torch.distributed.checkpoint`` into a new
    directory ``run_dir/shards-step<N>-<tag>``; returns its name (the same on every rank).

    Collective over ``group`` (the whole job): each rank writes only the pieces it holds (a
    piece held by several ranks, e.g. a replicated tensor, is written once) — nothing is
    gathered. The files go to a temporary directory that is renamed once every rank has
    finished, so a failed save leaves no half-written shards under a checkpoint's name; the
    previous checkpoint is untouched (the caller switches to the new one, then removes the old
    with :func:`remove_shards`)."""
    import secrets

    import torch.distributed.checkpoint as dcp

    from ..parallel.comm import raw_all_reduce, raw_broadcast_object

    run_dir = Path(run_dir)
    name = f"{SHARDS_PREFIX}{step:06d}-{secrets.token_hex(4)}" if group.rank == 0 else None
    name = raw_broadcast_object(name, group) if group.size > 1 else name
    tmp = run_dir / f".{name}.tmp"
    try:
        with _quiet_single_process():
            dcp.save(state, checkpoint_id=tmp, no_dist=group.size == 1)
    except BaseException:
        if group.rank == 0:
            remove_shards(tmp)
        raise
    if group.size > 1:                       # every rank's files are on disk
        raw_all_reduce(torch.zeros(1, device=device), group)
    if group.rank == 0:
        os.replace(tmp, run_dir / name)
    if group.size > 1:                       # the directory has its final name everywhere
        raw_all_reduce(torch.zeros(1, device=device), group)
    return name


def load_sharded(state: dict, path) -> None:
    """Fill ``state`` (tensors and DTensors of this rank, any layout) in place from the sharded
    checkpoint directory ``path``: each rank reads the pieces its own layout needs, whatever
    layout and number of processes wrote them (resharding)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a complete sharded checkpoint (no .metadata); "
                              f"resume from an earlier checkpoint or restart")
    no_dist = not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=path, no_dist=no_dist)


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it "assumes the intent" of a single process; here it is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def remove_shards(path) -> None:
    """Remove a sharded checkpoint directory written by :func:`save_sharded`: only the files
    the DCP writer creates are deleted, and the directory only when nothing else is in it."""
    path = Path(path)
    if not path.is_dir():
        return
    for f in path.iterdir():
        if f.is_file() and (f.name in _DCP_FILES or f.suffix == ".distcp"):
            f.unlink()
    try:
        path.rmdir()
    except OSError:
        pass
