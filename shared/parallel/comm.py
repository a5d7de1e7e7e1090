"""Collectives for model parallelism, in three layers (after Megatron-LM's ``mappings.py``).

1. ``raw_*`` helpers: one collective on a :class:`~shared.parallel.topology.Group`, no autograd, out of
   place (the input is never modified), allocating on the input's device so gloo (CPU) and NCCL
   (GPU) both work, and a no-op on a group of one. ``async_op=True`` returns a :class:`Pending`
   whose ``wait()`` gives the result, for overlapping communication with compute.
2. ``autograd.Function`` classes whose forward and backward are conjugate pairs.
3. snake_case wrappers, each documented as "forward: X, backward: Y":

   ========================  ====================================  ===========================
   wrapper                    forward                               backward
   ========================  ====================================  ===========================
   ``copy_to_group``          identity                              all-reduce
   ``reduce_from_group``      all-reduce                            identity
   ``all_gather``             all-gather along ``dim``              reduce-scatter along ``dim``
   ``reduce_scatter``         reduce-scatter along ``dim``          all-gather along ``dim``
   ``split_to_group``         keep this rank's chunk of ``dim``     all-gather along ``dim``
   ``gather_from_group``      all-gather along ``dim``              keep this rank's chunk
   ``broadcast``              broadcast from ``src``                reduce (sum) to ``src``
   ``reduce_to``              reduce (sum) to ``dst``               broadcast from ``dst``
   ``all_to_all``             all-to-all (scatter a, gather b)      all-to-all (scatter b, gather a)
   ``ring_shift``             receive from rank−s, send to rank+s   the reverse shift
   ========================  ====================================  ===========================

Communication accounting: every raw collective adds, under ``(group.name, op)``, the number of
calls, the payload bytes and the bytes *each rank sends* under the bandwidth-optimal ring
algorithm for a group of size g (``M`` = bytes of the full logical tensor): all-reduce
``2(g−1)/g·M``; all-gather (of the output), reduce-scatter (of the input), broadcast, reduce and
all-to-all ``(g−1)/g·M``; a point-to-point send ``M``. These are the counts of the cost models in
the papers (and of nccl-tests' "bus bandwidth"), so a measured count can be compared with a
closed-form one. Read them with :func:`comm_stats`, or per region with :class:`CommMeter`.

On gloo, reduce-scatter and all-to-all are emulated (all-reduce then slice; point-to-point
exchanges); the counters still report the algorithm above, which is what NCCL would send.

Devices: every raw collective first checks, with :func:`check_device`, that its tensor lives where
the group's backend can use it (CUDA for NCCL, CPU for gloo) and raises :class:`CommDeviceError`
otherwise: gloo would accept a CPU tensor that NCCL later refuses with an obscure message, so
the mistake shows up on a laptop. The backend is looked up once per group (``group.backend``,
filled lazily from ``torch.distributed.get_backend``; set it by hand to test without processes).

Object collectives (:func:`raw_broadcast_object`, :func:`raw_all_gather_object`) move any
picklable object (configs, metadata, small results) through the same tensor collectives, on the
group's device. They carry control data, not model traffic, so they are *not* counted.
"""
from __future__ import annotations

import io
from collections import defaultdict

import torch
import torch.distributed as dist

from .topology import Group

# ----------------------------------------------------------------------------------------------
# accounting

_STATS: dict[tuple[str, str], dict[str, float]] = defaultdict(
    lambda: {"calls": 0, "payload_bytes": 0, "sent_bytes": 0.0})

_RING_FACTOR = {
    "all_reduce": lambda g: 2.0 * (g - 1) / g,
    "all_gather": lambda g: (g - 1) / g,
    "reduce_scatter": lambda g: (g - 1) / g,
    "broadcast": lambda g: (g - 1) / g,
    "reduce": lambda g: (g - 1) / g,
    "all_to_all": lambda g: (g - 1) / g,
    "send": lambda g: 1.0,
    "batch_p2p": lambda g: 1.0,
}


def _count(group: Group, op: str, nbytes: int) -> None:
    s = _STATS[(group.name, op)]
    s["calls"] += 1
    s["payload_bytes"] += nbytes
    s["sent_bytes"] += _RING_FACTOR[op](group.size) * nbytes


def comm_stats() -> dict[tuple[str, str], dict[str, float]]:
    """A copy of the counters: ``{(group_name, op): {"calls", "payload_bytes", "sent_bytes"}}``."""
    return {k: dict(v) for k, v in _STATS.items()}


def reset_comm_stats() -> None:
    """Zero every communication counter."""
    _STATS.clear()


def total_sent_bytes(stats=None, group_prefix: str = "") -> float:
    """Bytes this rank sent (ring algorithm), summed over groups whose name starts with a prefix."""
    stats = comm_stats() if stats is None else stats
    return sum(v["sent_bytes"] for (g, _), v in stats.items() if g.startswith(group_prefix))


class CommMeter:
    """Context manager: ``with CommMeter() as m: ...``; then ``m.stats`` holds the counts of the
    collectives issued inside the block and ``m.sent_bytes`` their total."""

    def __enter__(self):
        self._before = comm_stats()
        return self

    def __exit__(self, *exc):
        after = comm_stats()
        self.stats = {}
        for key, v in after.items():
            b = self._before.get(key, {"calls": 0, "payload_bytes": 0, "sent_bytes": 0.0})
            delta = {f: v[f] - b[f] for f in v}
            if delta["calls"]:
                self.stats[key] = delta
        self.sent_bytes = total_sent_bytes(self.stats)
        return False


# ----------------------------------------------------------------------------------------------
# layer 1: raw collectives

def _active(group: Group | None) -> bool:
    return group is not None and group.size > 1 and group.pg is not None


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


# device type each backend communicates from; "cpu:gloo,cuda:nccl"-style strings list their own
_BACKEND_DEVICE = {"nccl": "cuda", "gloo": "cpu", "xccl": "xpu"}


class CommDeviceError(RuntimeError):
    """A tensor handed to a collective on a device that the group's backend cannot use (a CPU
    tensor on NCCL, a CUDA tensor on gloo). A bug in the calling code, so it keeps its traceback."""


def group_backend(group: Group) -> str:
    """The backend name of ``group`` (``"nccl"``, ``"gloo"``, ...), looked up once and cached as
    ``group.backend``. A group whose ``backend`` attribute is already set (a test's fake) keeps it."""
    backend = getattr(group, "backend", None)
    if backend is None:
        backend = str(dist.get_backend(group.pg))
        group.backend = backend
    return backend


def _allowed_devices(backend: str) -> set[str] | None:
    """Device types ``backend`` accepts, or None when this module does not know the backend."""
    backend = backend.lower()
    if ":" in backend:  # e.g. "cpu:gloo,cuda:nccl": one backend per device type
        return {part.split(":", 1)[0].strip() for part in backend.split(",") if ":" in part}
    dev = _BACKEND_DEVICE.get(backend)
    return None if dev is None else {dev}


def group_device(group: Group) -> torch.device:
    """The device the group's backend communicates from: the current CUDA device for NCCL,
    the CPU for gloo (and for backends this module does not know)."""
    allowed = _allowed_devices(group_backend(group)) or {"cpu"}
    if "cpu" in allowed:
        return torch.device("cpu")
    if "cuda" in allowed:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(sorted(allowed)[0])


def check_device(x: torch.Tensor, group: Group, op: str) -> None:
    """Raise :class:`CommDeviceError` unless ``x`` is on a device the group's backend uses.

    Cheap: one cached backend lookup and a set membership test. Unknown backends pass."""
    allowed = _allowed_devices(group_backend(group))
    if allowed is None or x.device.type in allowed:
        return
    want = " or ".join(sorted(allowed))
    raise CommDeviceError(
        f"{op} on group {group.name!r}: the tensor is on {x.device} but the group's backend is "
        f"{group_backend(group)!r}, which communicates {want} tensors; move the tensor to the "
        f"group's device first (e.g. x.to({want!r})) or build the groups with the backend of "
        f"the device you compute on")


def _is_nccl(group: Group) -> bool:
    return group_backend(group) == "nccl"


class Pending:
    """Result of an ``async_op=True`` collective: ``wait()`` blocks and returns the tensor."""

    def __init__(self, works, finish):
        self._works = works if isinstance(works, (list, tuple)) else [works]
        self._finish = finish
        self._result = None
        self._done = False

    def wait(self) -> torch.Tensor:
        if not self._done:
            for w in self._works:
                if w is not None:
                    w.wait()
            self._result = self._finish()
            self._done = True
        return self._result


def _done(x: torch.Tensor) -> Pending:
    return Pending([], lambda: x)


def _check_divisible(x: torch.Tensor, dim: int, group: Group, what: str) -> None:
    if x.shape[dim] % group.size:
        raise ValueError(
            f"{what}: dimension {dim} of a tensor of shape {tuple(x.shape)} has size "
            f"{x.shape[dim]}, not divisible by the {group.size} ranks of group {group.name!r}; "
            f"pad it or choose sizes divisible by {group.size}")


def raw_all_reduce(x: torch.Tensor, group: Group, async_op: bool = False):
    """Sum of ``x`` over the group (a new tensor)."""
    if not _active(group):
        return _done(x) if async_op else x
    check_device(x, group, "all_reduce")
    out = x.detach().clone().contiguous()
    _count(group, "all_reduce", _nbytes(out))
    work = dist.all_reduce(out, group=group.pg, async_op=async_op)
    return Pending(work, lambda: out) if async_op else out


def raw_all_gather(x: torch.Tensor, dim: int, group: Group, async_op: bool = False):
    """Concatenation along ``dim`` of every rank's ``x`` (same shapes on all ranks)."""
    if not _active(group):
        return _done(x) if async_op else x
    check_device(x, group, "all_gather")
    xc = x.detach().contiguous()
    parts = [torch.empty_like(xc) for _ in range(group.size)]
    _count(group, "all_gather", _nbytes(xc) * group.size)
    work = dist.all_gather(parts, xc, group=group.pg, async_op=async_op)
    finish = lambda: torch.cat(parts, dim=dim)  # noqa: E731
    return Pending(work, finish) if async_op else finish()


def raw_reduce_scatter(x: torch.Tensor, dim: int, group: Group, async_op: bool = False):
    """This rank's chunk (along ``dim``) of the sum of ``x`` over the group."""
    if not _active(group):
        return _done(x) if async_op else x
    check_device(x, group, "reduce_scatter")
    _check_divisible(x, dim, group, "reduce_scatter")
    _count(group, "reduce_scatter", _nbytes(x))
    chunk = x.shape[dim] // group.size
    if _is_nccl(group):
        xm = x.detach().movedim(dim, 0).contiguous()
        out = torch.empty((chunk,) + tuple(xm.shape[1:]), dtype=x.dtype, device=x.device)
        work = dist.reduce_scatter_tensor(out, xm, group=group.pg, async_op=async_op)
        finish = lambda: out.movedim(0, dim).contiguous()  # noqa: E731
    else:  # gloo: emulate with an all-reduce, then keep our chunk
        full = x.detach().clone().contiguous()
        work = dist.all_reduce(full, group=group.pg, async_op=async_op)
        finish = lambda: full.narrow(dim, group.rank * chunk, chunk).contiguous()  # noqa: E731
    return Pending(work, finish) if async_op else finish()


def raw_split(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """This rank's chunk of ``x`` along ``dim`` (no communication)."""
    if group is None or group.size == 1:
        return x
    _check_divisible(x, dim, group, "split")
    chunk = x.shape[dim] // group.size
    return x.narrow(dim, group.rank * chunk, chunk).contiguous()


def raw_broadcast(x: torch.Tensor, src: int, group: Group, async_op: bool = False):
    """``x`` of group rank ``src``, on every rank (``x`` elsewhere gives only shape and dtype)."""
    if not _active(group):
        return _done(x) if async_op else x
    check_device(x, group, "broadcast")
    out = x.detach().clone().contiguous() if group.rank == src else torch.empty_like(
        x, memory_format=torch.contiguous_format)
    _count(group, "broadcast", _nbytes(out))
    work = dist.broadcast(out, src=group.global_rank(src), group=group.pg, async_op=async_op)
    return Pending(work, lambda: out) if async_op else out


def raw_reduce(x: torch.Tensor, dst: int, group: Group, async_op: bool = False):
    """Sum over the group on group rank ``dst``; zeros on the other ranks.

    (gloo's ``reduce`` leaves partial sums in non-root buffers, so the input is always copied.)
    """
    if not _active(group):
        return _done(x) if async_op else x
    check_device(x, group, "reduce")
    buf = x.detach().clone().contiguous()
    _count(group, "reduce", _nbytes(buf))
    work = dist.reduce(buf, dst=group.global_rank(dst), group=group.pg, async_op=async_op)
    finish = (lambda: buf) if group.rank == dst else (lambda: torch.zeros_like(buf))
    return Pending(work, finish) if async_op else finish()


def raw_all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: Group,
                   async_op: bool = False):
    """Split ``x`` into g chunks along ``scatter_dim``; chunk j goes to rank j; the received
    chunks are concatenated along ``gather_dim`` in rank order."""
    if not _active(group):
        return _done(x) if async_op else x
    check_device(x, group, "all_to_all")
    _check_divisible(x, scatter_dim, group, "all_to_all")
    _count(group, "all_to_all", _nbytes(x))
    sends = [c.contiguous() for c in x.detach().chunk(group.size, dim=scatter_dim)]
    recvs = [torch.empty_like(c) for c in sends]
    if _is_nccl(group):
        work = dist.all_to_all(recvs, sends, group=group.pg, async_op=async_op)
        works = [work]
    else:  # gloo has no all_to_all: exchange with every peer point to point
        recvs[group.rank] = sends[group.rank]
        works = []
        for peer in range(group.size):
            if peer == group.rank:
                continue
            g = group.global_rank(peer)
            works.append(dist.isend(sends[peer], g, group=group.pg))
            works.append(dist.irecv(recvs[peer], g, group=group.pg))
        if not async_op:
            for w in works:
                w.wait()
            works = []
    finish = lambda: torch.cat(recvs, dim=gather_dim)  # noqa: E731
    return Pending(works, finish) if async_op else finish()


class RingExchange:
    """Point-to-point ring step: send ``x`` to group rank ``rank+shift`` and receive the tensor
    of ``rank−shift``. ``start`` posts both transfers and returns at once, so the caller can
    compute on the current block while the next one travels; ``wait`` returns the received one.

    Example (overlap)::

        ring = RingExchange(group)
        for step in range(group.size):
            if step + 1 < group.size:
                ring.start(k_block)       # post the next block's transfer first
            out += compute(q, k_block)    # ... then compute on the current block
            if step + 1 < group.size:
                k_block = ring.wait()
    """

    def __init__(self, group: Group, shift: int = 1):
        self.group = group
        self.shift = shift
        self._pending = None

    def start(self, x: torch.Tensor) -> None:
        if self._pending is not None:
            raise RuntimeError("RingExchange.start called twice without wait()")
        g = self.group
        if not _active(g) or self.shift % g.size == 0:  # a full turn of the ring: stay here
            self._pending = _done(x)
            return
        check_device(x, g, "ring_shift")
        send = x.detach().contiguous()
        recv = torch.empty_like(send)
        dst = g.global_rank((g.rank + self.shift) % g.size)
        src = g.global_rank((g.rank - self.shift) % g.size)
        _count(g, "send", _nbytes(send))
        works = [dist.isend(send, dst, group=g.pg), dist.irecv(recv, src, group=g.pg)]
        self._pending = Pending(works, lambda: recv)

    def wait(self) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("RingExchange.wait called before start()")
        out, self._pending = self._pending.wait(), None
        return out


def raw_batch_isend_irecv(sends, recvs, group: Group) -> Pending:
    """Every send and receive of one exchange posted as ONE ``torch.distributed.batch_isend_irecv``
    call (the safe form of a ring: with NCCL, separate isend/irecv calls whose order differs
    between ranks can deadlock, NCCL issue 479), without waiting.

    Args:
        sends: ``[(tensor, dst), ...]``, destinations as ranks of ``group``.
        recvs: ``[(like, src), ...]``: a buffer shaped like ``like`` is received from each ``src``.
    Returns:
        a :class:`Pending` whose ``wait()`` gives the list of received tensors, in ``recvs`` order.

    Counted as one call of op ``"batch_p2p"``; the bytes sent are the sum of the sends.
    """
    if not _active(group):
        if len(sends) != len(recvs):
            raise ValueError("batch_isend_irecv on a group of one needs one receive per send")
        return _done([x for x, _ in sends])
    for x, _ in sends:
        check_device(x, group, "batch_isend_irecv")
    send = [(x.detach().contiguous(), dst) for x, dst in sends]
    bufs = [torch.empty(like.shape, dtype=like.dtype, device=like.device) for like, _ in recvs]
    _count(group, "batch_p2p", sum(_nbytes(x) for x, _ in send))
    ops = [dist.P2POp(dist.isend, x, group.global_rank(dst), group=group.pg) for x, dst in send]
    ops += [dist.P2POp(dist.irecv, buf, group.global_rank(src), group=group.pg)
            for buf, (_, src) in zip(bufs, recvs)]
    works = dist.batch_isend_irecv(ops) if ops else []
    return Pending(works, lambda: bufs)


def raw_ring_shift(x: torch.Tensor, group: Group, shift: int = 1) -> torch.Tensor:
    """Blocking ring step (see :class:`RingExchange`)."""
    ring = RingExchange(group, shift)
    ring.start(x)
    return ring.wait()


def _to_bytes_tensor(obj, device: torch.device) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(device)


def _from_bytes_tensor(t: torch.Tensor):
    return torch.load(io.BytesIO(t.cpu().numpy().tobytes()), weights_only=False)


def _check_src(src: int, group: Group, op: str) -> None:
    if not 0 <= src < group.size:
        raise ValueError(f"{op}: src={src} is not a rank of group {group.name!r} "
                         f"(group ranks 0..{group.size - 1}); pass a group rank, not a global one")


def raw_broadcast_object(obj, group: Group, src: int = 0):
    """The object ``obj`` of group rank ``src``, on every rank of ``group``.

    ``obj`` is pickled with ``torch.save`` into a uint8 tensor on the group's device
    (:func:`group_device`); the size goes first, then the payload. Tensors inside come back on
    the device they were saved from. Not counted in :func:`comm_stats`. On a group of one (or
    ``None``) returns ``obj`` itself."""
    if not _active(group):
        return obj
    _check_src(src, group, "broadcast_object")
    device = group_device(group)
    root = group.global_rank(src)
    payload = _to_bytes_tensor(obj, device) if group.rank == src else None
    size = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.int64,
                        device=device)
    check_device(size, group, "broadcast_object")
    dist.broadcast(size, src=root, group=group.pg)
    if payload is None:
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=root, group=group.pg)
    return obj if group.rank == src else _from_bytes_tensor(payload)


def raw_all_gather_object(obj, group: Group) -> list:
    """Every rank's ``obj``, as a list in group-rank order (this rank's own entry is ``obj``).

    Pickled with ``torch.save`` into uint8 tensors on the group's device; the sizes are gathered
    first, then the payloads padded to the largest. Not counted in :func:`comm_stats`. On a
    group of one (or ``None``) returns ``[obj]``."""
    if not _active(group):
        return [obj]
    device = group_device(group)
    payload = _to_bytes_tensor(obj, device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    check_device(size, group, "all_gather_object")
    sizes = [torch.empty_like(size) for _ in range(group.size)]
    dist.all_gather(sizes, size, group=group.pg)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[:payload.numel()] = payload
    parts = [torch.empty_like(padded) for _ in range(group.size)]
    dist.all_gather(parts, padded, group=group.pg)
    return [obj if r == group.rank else _from_bytes_tensor(parts[r][:n])
            for r, n in enumerate(sizes)]


# ----------------------------------------------------------------------------------------------
# layer 2: autograd Functions in conjugate pairs

class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return raw_all_reduce(g, ctx.group), None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return raw_all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return raw_all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return raw_reduce_scatter(g, ctx.dim, ctx.group), None, None


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return raw_reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return raw_all_gather(g, ctx.dim, ctx.group), None, None


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return raw_split(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return raw_all_gather(g, ctx.dim, ctx.group), None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return raw_all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return raw_split(g, ctx.dim, ctx.group), None, None


class _Broadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, group):
        ctx.src, ctx.group = src, group
        return raw_broadcast(x, src, group)

    @staticmethod
    def backward(ctx, g):
        return raw_reduce(g, ctx.src, ctx.group), None, None


class _ReduceTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dst, group):
        ctx.dst, ctx.group = dst, group
        return raw_reduce(x, dst, group)

    @staticmethod
    def backward(ctx, g):
        return raw_broadcast(g, ctx.dst, ctx.group), None, None


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return raw_all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, g):
        scatter_dim, gather_dim = ctx.dims
        return raw_all_to_all(g, gather_dim, scatter_dim, ctx.group), None, None, None


class _RingShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, shift):
        ctx.group, ctx.shift = group, shift
        return raw_ring_shift(x, group, shift)

    @staticmethod
    def backward(ctx, g):
        return raw_ring_shift(g, ctx.group, -ctx.shift), None, None


# ----------------------------------------------------------------------------------------------
# layer 3: wrappers

def copy_to_group(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Forward: identity. Backward: all-reduce of the gradient over ``group``.

    Use where a replicated activation enters a region whose ranks each use it differently
    (Megatron: before a column-parallel Linear)."""
    return _CopyToGroup.apply(x, group) if _active(group) else x


def reduce_from_group(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Forward: all-reduce (sum) over ``group``. Backward: identity.

    Use where partial sums leave a parallel region (Megatron: after a row-parallel Linear)."""
    return _ReduceFromGroup.apply(x, group) if _active(group) else x


def all_gather(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """Forward: all-gather along ``dim``. Backward: reduce-scatter along ``dim``.

    For a gathered result that each rank uses differently (each contributes gradient)."""
    return _AllGather.apply(x, dim, group) if _active(group) else x


def reduce_scatter(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """Forward: reduce-scatter (sum, then keep this rank's chunk of ``dim``). Backward: all-gather."""
    return _ReduceScatter.apply(x, dim, group) if _active(group) else x


def split_to_group(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """Forward: keep this rank's chunk of ``dim`` (no communication). Backward: all-gather.

    ``x`` must be replicated over the group."""
    if group is None or group.size == 1:
        return x
    if group.pg is None:
        raise RuntimeError(f"group {group.name!r} has {group.size} ranks but no process group")
    return _Split.apply(x, dim, group)


def gather_from_group(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """Forward: all-gather along ``dim``. Backward: keep this rank's chunk of the gradient.

    For a gathered result used identically on every rank (replicated downstream)."""
    return _Gather.apply(x, dim, group) if _active(group) else x


def broadcast(x: torch.Tensor, src: int, group: Group) -> torch.Tensor:
    """Forward: broadcast group rank ``src``'s tensor. Backward: reduce (sum) gradients to ``src``
    (the other ranks' inputs get zero gradient)."""
    return _Broadcast.apply(x, src, group) if _active(group) else x


def reduce_to(x: torch.Tensor, dst: int, group: Group) -> torch.Tensor:
    """Forward: sum over the group on rank ``dst`` (zeros elsewhere). Backward: broadcast the
    gradient of ``dst`` to every rank."""
    return _ReduceTo.apply(x, dst, group) if _active(group) else x


def all_to_all(x: torch.Tensor, group: Group, scatter_dim: int = 0,
               gather_dim: int = 0) -> torch.Tensor:
    """Forward: all-to-all (chunk j of ``scatter_dim`` to rank j, received chunks concatenated
    along ``gather_dim``). Backward: the inverse all-to-all."""
    return _AllToAll.apply(x, scatter_dim, gather_dim, group) if _active(group) else x


def ring_shift(x: torch.Tensor, group: Group, shift: int = 1) -> torch.Tensor:
    """Forward: send to group rank ``rank+shift``, receive from ``rank−shift``.
    Backward: the reverse shift of the gradient."""
    return _RingShift.apply(x, group, shift) if _active(group) else x
