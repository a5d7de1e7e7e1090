"""Start-up and teardown of torch.distributed, and a local ``spawn`` for tests and CPU demos.

Two ways a job starts:

* under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` set):
  :func:`init_distributed` joins the process group, with NCCL when CUDA is present and gloo
  otherwise, one device per local rank;
* as a plain ``python`` process: a single-process environment, no process group.

Every collective gets a timeout (``timeout_s``), so a rank that dies or hangs ends the job with
an error instead of blocking forever; torchrun then reports the failing rank.

:func:`spawn` runs ``fn(env, *args)`` on ``world_size`` local gloo processes on a free port and
returns the per-rank results; a child's exception is re-raised in the parent with the child's
traceback and rank, and the other children are stopped at once.
"""
from __future__ import annotations

import datetime
import io
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


@dataclass
class DistEnv:
    """Where this process stands: ``rank``/``world_size`` of the job, ``local_rank`` on its node,
    the ``device`` it computes on and the ``backend`` (``None`` for a single process)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None,
                     device: str | None = None) -> DistEnv:
    """Join the job described by torchrun's environment, or return a single-process env.

    Args:
        timeout_s: seconds a collective may wait for the other ranks before raising.
        backend: force ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
        device: force ``"cpu"``; default ``cuda:<local_rank>`` when CUDA is available.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                f"start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size == 1:
        return DistEnv(0, 1, 0, dev, None)
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    Heartbeat.start(rank, world_size)
    return DistEnv(rank, world_size, local_rank, dev, backend)


class Heartbeat:
    """Liveness of every rank, kept in torch.distributed's key-value store.

    A daemon thread of each rank writes the time to ``heartbeat/<rank>`` every ``interval``
    seconds, and ``heartbeat-who/<rank>`` holds ``host pid``. When a collective times out,
    :func:`stale_ranks` tells which ranks stopped writing: a rank stopped with SIGSTOP, stuck in
    a system call or swapped out, rather than one that is merely in another collective. Under
    torchrun the store lives in the launcher, so it answers even when rank 0 is the stopped one.
    """
    interval = 1.0
    _store = None
    _thread = None

    @classmethod
    def start(cls, rank: int, world_size: int) -> None:
        import threading

        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - a private API: without it, no heartbeat
            return
        cls._store = store
        store.set(f"heartbeat-who/{rank}", f"{socket.gethostname()} {os.getpid()}")

        def beat():
            while True:
                try:
                    store.set(f"heartbeat/{rank}", repr(time.time()))
                except Exception:  # noqa: BLE001 - the store is gone: the job is ending
                    return
                time.sleep(cls.interval)

        cls._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        cls._thread.start()


def stale_ranks(min_age_s: float | None = None) -> list[dict]:
    """Ranks whose heartbeat is older than ``min_age_s`` (default 3 intervals): a list of
    ``{"rank", "age", "host", "pid"}``; ``[]`` without a process group or a store."""
    store = Heartbeat._store
    if store is None or not (dist.is_available() and dist.is_initialized()):
        return []
    min_age_s = 3 * Heartbeat.interval if min_age_s is None else min_age_s
    out = []
    try:
        store.set_timeout(datetime.timedelta(seconds=2))
        now = time.time()
        for r in range(dist.get_world_size()):
            if not store.check([f"heartbeat/{r}"]):
                continue
            age = now - float(store.get(f"heartbeat/{r}").decode())
            if age > min_age_s:
                host, pid = store.get(f"heartbeat-who/{r}").decode().split()
                out.append({"rank": r, "age": age, "host": host, "pid": int(pid)})
    except Exception:  # noqa: BLE001 - the store itself is unreachable: nothing to name
        return out
    return out


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """One line for an exception raised on a distributed job, and whether it is explained by
    ranks that stopped answering (those are SIGKILLed when they live on this host, so that the
    launcher can end the job at once instead of waiting for them)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    stale = [s for s in stale_ranks() if s["rank"] != rank]
    if not stale:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"[rank {rank}/{world}] failed: {type(exc).__name__}: {first}", False
    parts = []
    for s in stale:
        text = (f"rank {s['rank']} (host {s['host']}, pid {s['pid']}) stopped responding "
                f"{s['age']:.1f} s ago")
        if s["host"] == socket.gethostname():
            try:
                os.kill(s["pid"], 9)
                text += "; killed it so that the job can end"
            except OSError:
                pass
        parts.append(text)
    return (f"[rank {rank}/{world}] a collective timed out: " + "; ".join(parts)
            + " (the wait is --timeout seconds; raise it if that rank was only slow)"), True


def teardown() -> None:
    """Destroy the process group if one exists (safe to call twice or in a single process)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def end_process_group() -> None:
    """Destroy the process group without a barrier (after a failure the other ranks may be gone);
    errors of a group that cannot tear down cleanly are ignored."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a failed job may not tear down cleanly
            pass


def is_main_process() -> bool:
    """True on rank 0, and in a process without a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpawnError(RuntimeError):
    """A child process of :func:`spawn` failed; the message holds its rank and traceback."""


def _child(fn, rank, world_size, port, timeout_s, results, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        env = init_distributed(timeout_s=timeout_s, backend="gloo", device="cpu")
        out = fn(env, *args)
        # Send plain bytes: tensors put on a queue as they are travel as shared-memory file
        # descriptors that vanish when this process exits before the parent has read them.
        buf = io.BytesIO()
        torch.save(out, buf)
        results.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - reported to the parent, which re-raises
        results.put((rank, "error", traceback.format_exc()))
        return
    try:
        if dist.is_initialized():
            # rank 0 hosts the rendezvous store: no rank may leave while another still uses it
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - teardown after success must not turn it into failure
        pass


_CTX = None


def _context():
    """A forkserver context that has imported torch once: children start in well under a second."""
    global _CTX
    if _CTX is None:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        _CTX = mp.get_context(method)
        if method == "forkserver":
            _CTX.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo",
                                        "timm.scheduler",
                                        "shared.parallel"])
    return _CTX


def spawn(fn, world_size: int, *args, timeout_s: float = 300.0):
    """Run ``fn(env, *args)`` on ``world_size`` local processes joined by gloo.

    ``fn`` must be importable (a module-level function). Returns the list of its return values,
    indexed by rank. If a child raises, the others are stopped and :class:`SpawnError` is raised
    with that child's rank and traceback; if the whole run exceeds ``timeout_s`` seconds, the
    children are killed and the error names the ranks still running.
    """
    if world_size < 1:
        raise ValueError(f"spawn needs at least one process; got world_size={world_size}")
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    collective_timeout = max(5.0, min(timeout_s, DEFAULT_TIMEOUT_S))
    procs = [ctx.Process(target=_child, args=(fn, r, world_size, port, collective_timeout,
                                              results, args), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    outputs: dict[int, object] = {}
    deadline = time.monotonic() + timeout_s
    failure = None
    try:
        while len(outputs) < world_size and failure is None:
            try:
                rank, status, payload = results.get(timeout=0.05)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs)
                        if p.exitcode not in (None, 0) and r not in outputs]
                if dead:
                    # give a late message from the dying child a moment to arrive
                    try:
                        rank, status, payload = results.get(timeout=1.0)
                    except queue_mod.Empty:
                        failure = (f"rank {dead[0]} of {world_size} exited with code "
                                   f"{procs[dead[0]].exitcode} without reporting a result")
                        break
                elif time.monotonic() > deadline:
                    running = [r for r in range(world_size) if r not in outputs]
                    failure = (f"spawn timed out after {timeout_s:.0f} s; ranks still running: "
                               f"{running}")
                    break
                else:
                    continue
            if status == "ok":
                outputs[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                failure = f"rank {rank} of {world_size} raised:\n{payload}"
    finally:
        for p in procs:
            if failure is not None and p.is_alive():
                p.kill()
            p.join(timeout=10.0 if failure is None else 2.0)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    if failure is not None:
        raise SpawnError(failure)
    return [outputs[r] for r in range(world_size)]
