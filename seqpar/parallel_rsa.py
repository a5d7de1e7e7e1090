"""Ring Self-Attention (RSA, arXiv 2105.13120 §3) and a memory-lean log-sum-exp variant.

Notation (the brief's): B batch, Z heads, A head dim, N ranks of the sequence group, c = L/N
tokens per rank. Every rank holds the query/key/value rows of its own contiguous token chunk,
``q, k, v: [B, Z, c, A]``, and a key-padding mask over the *full* sequence, ``[B, L]`` (True =
a real token that may be attended to).

Paper mode (``lean=False``), two autograd Functions:

* :class:`RingQK`: the key blocks travel the ring; rank n writes ``Q_n K_jᵀ`` into column block j
  of its score rows ``S_n: [B, Z, c, L]``. Backward: ``dQ_n = Σ_j dS_n[:, :, :, j] K_j`` (a second
  ring pass of K) and ``dK = reduce_scatter(dS_nᵀ Q_n)`` (the full-length partial summed over the
  group; the reference all-reduces and slices, which sends twice as much).
* :class:`RingAV`: the value blocks travel the ring; ``O_n = Σ_j P_n[:, :, :, j] V_j``. Backward:
  ``dP_n[:, :, :, j] = dO_n V_jᵀ`` (a second ring pass of V) and
  ``dV = reduce_scatter(P_nᵀ dO_n)``.

Scale (1/√A, not the reference's 1/√H), key mask, softmax and dropout run locally between the
two, because every rank owns complete score rows. Gradients are exact partials: no division by N.

Memory-lean mode (``lean=True``, beyond the paper; as in ring/flash attention): one Function,
:class:`LeanRingAttention`, that never forms the ``[c, L]`` score rows. K and V travel together;
each block's partial softmax is merged into a running (max, sum, output) triple (the online
log-sum-exp update), and only the output and the row max and sum ``[B, Z, c, 1]`` are saved.
Backward re-circulates K and V, recomputes each block's probabilities from the saved row max and
sum, keeps dQ local and passes the dK/dV accumulators around the ring with their block, so they
arrive home after N hops. Attention
dropout draws each tile's mask from a generator seeded by (call seed, block origin, tile), so
the backward pass regenerates exactly the same mask without storing it. Inside a block, keys are
processed in tiles of ``LEAN_TILE``, so no temporary grows with the sequence length beyond
``[B, Z, c, LEAN_TILE]``.

Causal attention, placement and packed documents (beyond the paper): which keys a query sees is
given by a :class:`Visibility` in *layout order* (the order of the tokens over the ranks: rank n
holds layout slots ``[n·c, (n+1)·c)``): the key-padding mask, the absolute position of every slot
(``layout_positions``: ``"contiguous"``, the paper's, or ``"zigzag"``: the sequence cut into 2N
chunks, rank n holding chunks n and 2N−1−n, so every rank has the same causal work), a causal
flag and the document id of every token (packed sequences, cu_seqlens style: no attention across
a document boundary, also across chunks on different ranks). Each chunk is cut into runs of
consecutive positions; a (query run, key run) pair that the causal mask hides entirely is skipped
(no matmul forward or backward). The blocks still travel the ring: every rank needs the later
blocks for its later queries. :data:`WORK` counts the score entries each rank computes.

Safe ring: every ring step is ONE ``batch_isend_irecv`` call
(:func:`shared.parallel.comm.raw_batch_isend_irecv`) holding all its sends and receives; with
NCCL, separate isend/irecv whose order differs between ranks can deadlock (NCCL issue 479).
Overlap: in every ring pass the next step's exchange is posted before the current block's matmul
and waited for after it (the lean backward posts the K/V block and the previous block's dK/dV
accumulator together). ``overlap=False`` posts it after the matmul (the reference's behaviour),
for the benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.errors import UsageError
from shared.parallel.comm import raw_batch_isend_irecv, raw_reduce_scatter
from shared.parallel.topology import Group

from .models.bert import allowed_keys, fill_hidden, mask_value

LAYOUTS = ("contiguous", "zigzag")

WORK = {"score_entries": 0}
"""Score entries (query x key products of B·Z rows) computed by the forward passes of this
process, skipped blocks excluded: the bench reads it per rank for the load balance."""


# ----------------------------------------------------------------------------------------------
# helpers


def check_sequence_split(seq_len: int, n: int, layout: str = "contiguous") -> int:
    """Tokens per rank ``c = L/N``; a clear error when the sequence cannot be split evenly
    (zigzag: into 2N equal chunks)."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    parts = n if layout == "contiguous" else 2 * n
    what = f"the {n} ranks of the sequence group" if parts == n else \
        f"the {parts} chunks of the zigzag layout over {n} ranks"
    if parts > seq_len:
        raise UsageError(f"sequence parallelism over {what} needs at least {parts} tokens, but "
                         f"the sequence has {seq_len}; use fewer ranks or a longer sequence")
    if seq_len % parts:
        lower, upper = seq_len - seq_len % parts, seq_len + parts - seq_len % parts
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise UsageError(f"sequence length {seq_len} is not divisible by {what}; pad or cut it "
                         f"to {options} (--seq_len), or use a number of ranks that divides "
                         f"{seq_len}")
    return seq_len // n


def padded_length(length: int, n: int, layout: str = "contiguous") -> int:
    """The shortest length >= ``length`` that splits over ``n`` ranks in ``layout``."""
    parts = n if layout == "contiguous" else 2 * n
    return -(-length // parts) * parts


def layout_positions(length: int, n: int, layout: str = "contiguous",
                     device=None) -> torch.Tensor:
    """``[L]``: the absolute position of the token held in each layout slot (rank r holds slots
    ``[r·c, (r+1)·c)``). Zigzag: chunks r and 2N−1−r of the 2N equal chunks on rank r."""
    check_sequence_split(length, n, layout)
    pos = torch.arange(length, device=device)
    if layout == "contiguous":
        return pos
    chunks = pos.view(2 * n, -1)
    return torch.cat([torch.cat([chunks[r], chunks[2 * n - 1 - r]]) for r in range(n)])


def to_layout(x: torch.Tensor, positions: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """A full-sequence tensor in natural order → layout order (along ``dim``)."""
    return x.index_select(dim, positions.to(x.device))


def from_layout(x: torch.Tensor, positions: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Layout order → natural order (along ``dim``)."""
    return x.index_select(dim, torch.argsort(positions).to(x.device))


def _runs(pos: torch.Tensor) -> list[slice]:
    """Maximal runs of consecutive positions in a chunk, as slices of the chunk."""
    cuts = [0] + [i + 1 for i in torch.nonzero(pos[1:] != pos[:-1] + 1).flatten().tolist()]
    cuts.append(len(pos))
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


@dataclass
class Visibility:
    """Which keys each query sees, over the full sequence in layout order.

    key_mask: [B, L] bool (True = a real key) or None; positions: [L] absolute position of each
    layout slot (None = contiguous); causal: hide later positions; doc_ids: [B, L] document id
    of each token (packed sequences) or None."""
    key_mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    causal: bool = False
    doc_ids: torch.Tensor | None = None

    def prepare(self, length: int, c: int, device) -> "Visibility":
        """Positions on the device and the run length: runs of consecutive positions are cut
        into pieces of the gcd of every chunk's run lengths (zigzag: L/2N, so that the causal
        diagonal is skipped at the same granularity on every rank)."""
        pos = self.positions
        pos = torch.arange(length, device=device) if pos is None else pos.to(device)
        vis = Visibility(self.key_mask, pos, self.causal, self.doc_ids)
        vis._runs_cache = {}
        cpu = pos.cpu()
        lengths = [r.stop - r.start for i in range(0, length, c) for r in _runs(cpu[i:i + c])]
        vis._piece = math.gcd(*lengths)
        return vis

    def runs(self, cols: slice) -> list[slice]:
        key = (cols.start, cols.stop)
        if key not in self._runs_cache:
            p = self._piece
            self._runs_cache[key] = [slice(a, min(r.stop, a + p))
                                     for r in _runs(self.positions[cols].cpu())
                                     for a in range(r.start, r.stop, p)]
        return self._runs_cache[key]

    def hidden(self, rows: slice, cols: slice) -> bool:
        """True when the causal mask hides every (row, col) pair: the block is skipped."""
        return self.causal and bool(self.positions[cols].min() > self.positions[rows].max())

    def allowed(self, rows: slice, cols: slice):
        """``[B or 1, 1, rows, cols]`` bool or None."""
        km = None if self.key_mask is None else self.key_mask[:, cols]
        docs = self.doc_ids
        return allowed_keys(km, self.positions[rows], self.positions[cols], self.causal,
                            None if docs is None else docs[:, rows],
                            None if docs is None else docs[:, cols])

    def pairs(self, rows: slice, cols: slice) -> list[tuple[slice, slice]]:
        """The (query run, key run) pairs of a block to compute, relative to ``rows``/``cols``;
        the causally hidden ones are left out."""
        if not self.causal:
            return [(slice(0, rows.stop - rows.start), slice(0, cols.stop - cols.start))]
        out = []
        for qs in self.runs(rows):
            for ks in self.runs(cols):
                if not self.hidden(_shift(qs, rows.start), _shift(ks, cols.start)):
                    out.append((qs, ks))
        return out


def _shift(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by)


def check_attention_inputs(q, k, v, vis: Visibility, group: Group) -> None:
    """Shapes of the local chunks and of the full-sequence masks, checked before any work."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise UsageError(f"q, k, v must all be [B, Z, c, A] local chunks of the same shape; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, _, c, _ = q.shape
    length = c * group.size
    for name, t in (("key mask", vis.key_mask), ("doc ids", vis.doc_ids)):
        if t is not None and tuple(t.shape) != (b, length):
            raise UsageError(f"{name} must cover the full sequence, shape [B, L] = [{b}, "
                             f"{length}] ({group.size} ranks x {c} local tokens); got "
                             f"{tuple(t.shape)}")
    if vis.key_mask is not None and vis.key_mask.dtype != torch.bool:
        raise UsageError(f"key mask must be a bool tensor (True = attend); got "
                         f"{vis.key_mask.dtype}")
    if vis.positions is not None and tuple(vis.positions.shape) != (length,):
        raise UsageError(f"positions must give the [L] = [{length}] absolute positions of the "
                         f"layout; got {tuple(vis.positions.shape)}")


class Ring:
    """One ring step = one ``batch_isend_irecv``: send tensors to group rank ``rank+1`` and
    receive tensors of the same shapes from ``rank−1``."""

    def __init__(self, group: Group):
        self.group = group
        self.next, self.prev = (group.rank + 1) % group.size, (group.rank - 1) % group.size
        self._pending = None

    def start(self, *tensors: torch.Tensor) -> None:
        if self._pending is not None:
            raise RuntimeError("Ring.start called twice without wait()")
        self._pending = raw_batch_isend_irecv([(t, self.next) for t in tensors],
                                              [(t, self.prev) for t in tensors], self.group)

    def wait(self) -> list[torch.Tensor]:
        if self._pending is None:
            raise RuntimeError("Ring.wait called before start()")
        out, self._pending = self._pending.wait(), None
        return out


def ring_blocks(x: torch.Tensor, group: Group, overlap: bool = True):
    """Yield ``(origin, block)`` for the N blocks of ``x`` circulating the ring, ours first.

    At step i the block held came from group rank ``(rank - i) mod N``. With ``overlap`` the next
    transfer is posted before the caller computes on the current block (between the yields).
    """
    n, rank = group.size, group.rank
    ring = Ring(group)
    block = x
    for step in range(n):
        last = step + 1 == n
        if overlap and not last:
            ring.start(block)
        yield (rank - step) % n, block
        if not last:
            if not overlap:
                ring.start(block)
            block = ring.wait()[0]


def _cols(origin: int, c: int) -> slice:
    return slice(origin * c, (origin + 1) * c)


# ----------------------------------------------------------------------------------------------
# paper mode: Ring-QK and Ring-AV


class RingQK(torch.autograd.Function):
    """S_n = Q_n [K_0 | K_1 | … | K_{N-1}]ᵀ: [B, Z, c, A] x N blocks → [B, Z, c, L]
    (causally hidden pairs of runs are left at 0 and skipped)."""

    @staticmethod
    def forward(ctx, q, k, group, overlap, vis):
        b, z, c, _ = q.shape
        rows = _cols(group.rank, c)
        scores = q.new_zeros(b, z, c, c * group.size)                   # [B, Z, c, L]
        for origin, k_block in ring_blocks(k, group, overlap):
            cols = _cols(origin, c)
            for qs, ks in vis.pairs(rows, cols):
                scores[..., qs, _shift(ks, cols.start)] = \
                    q[..., qs, :] @ k_block[..., ks, :].transpose(-1, -2)
                WORK["score_entries"] += b * z * (qs.stop - qs.start) * (ks.stop - ks.start)
        ctx.save_for_backward(q, k)                                      # local chunks only
        ctx.group, ctx.overlap, ctx.vis = group, overlap, vis
        return scores

    @staticmethod
    def backward(ctx, d_scores):                                         # [B, Z, c, L]
        q, k = ctx.saved_tensors
        c = q.shape[2]
        rows = _cols(ctx.group.rank, c)
        # dK: every rank's full-length partial dS_nᵀ Q_n [B, Z, L, A], summed, our slice kept
        d_k = raw_reduce_scatter(d_scores.transpose(-1, -2) @ q, 2, ctx.group, async_op=True)
        d_q = torch.zeros_like(q)
        for origin, k_block in ring_blocks(k, ctx.group, ctx.overlap):  # second pass of K
            cols = _cols(origin, c)
            for qs, ks in ctx.vis.pairs(rows, cols):
                d_q[..., qs, :] += d_scores[..., qs, _shift(ks, cols.start)] @ k_block[..., ks, :]
        return d_q, d_k.wait(), None, None, None


class RingAV(torch.autograd.Function):
    """O_n = Σ_j P_n[:, :, :, block j] V_j: [B, Z, c, L], N blocks [B, Z, c, A] → [B, Z, c, A]."""

    @staticmethod
    def forward(ctx, probs, v, group, overlap, vis):
        c = v.shape[2]
        rows = _cols(group.rank, c)
        out = torch.zeros_like(v)
        for origin, v_block in ring_blocks(v, group, overlap):
            cols = _cols(origin, c)
            for qs, ks in vis.pairs(rows, cols):
                out[..., qs, :] += probs[..., qs, _shift(ks, cols.start)] @ v_block[..., ks, :]
        ctx.save_for_backward(probs, v)
        ctx.group, ctx.overlap, ctx.vis = group, overlap, vis
        return out

    @staticmethod
    def backward(ctx, d_out):                                            # [B, Z, c, A]
        probs, v = ctx.saved_tensors
        c = v.shape[2]
        rows = _cols(ctx.group.rank, c)
        d_v = raw_reduce_scatter(probs.transpose(-1, -2) @ d_out, 2, ctx.group, async_op=True)
        d_probs = torch.zeros_like(probs)
        for origin, v_block in ring_blocks(v, ctx.group, ctx.overlap):  # second pass of V
            cols = _cols(origin, c)
            for qs, ks in ctx.vis.pairs(rows, cols):
                d_probs[..., qs, _shift(ks, cols.start)] = \
                    d_out[..., qs, :] @ v_block[..., ks, :].transpose(-1, -2)
        return d_probs, d_v.wait(), None, None, None


def _rsa(q, k, v, group, vis, dropout_p, overlap):
    c = q.shape[2]
    scores = RingQK.apply(q, k, group, overlap, vis) * (1.0 / math.sqrt(q.shape[-1]))
    allowed = vis.allowed(_cols(group.rank, c), slice(0, c * group.size))
    probs = torch.softmax(fill_hidden(scores, allowed), dim=-1)         # complete local rows
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, dropout_p, training=True)
    # softmax runs in float32 under autocast; the ring matmuls take one dtype (backward runs
    # outside autocast)
    return RingAV.apply(probs.to(v.dtype), v, group, overlap, vis)


# ----------------------------------------------------------------------------------------------
# memory-lean mode: log-sum-exp merge, no [c, L] block


LEAN_TILE = 128
"""Keys per tile in the lean mode: each received block is processed in tiles of this many keys,
so the largest temporary is [B, Z, c, LEAN_TILE] whatever the sequence length."""


def _tiles(ks: slice):
    return [(t0, min(ks.stop, t0 + LEAN_TILE)) for t0 in range(ks.start, ks.stop, LEAN_TILE)]


def _lean_tiles(vis: Visibility, rows: slice, origin: int, c: int):
    """(query run, key tile start, key tile end) triples of a block to compute."""
    cols = _cols(origin, c)
    return [(qs, t0, t1) for qs, ks in vis.pairs(rows, cols) for t0, t1 in _tiles(ks)]


def _tile_keep(seed: int, origin: int, q0: int, t0: int, shape, p: float,
               device) -> torch.Tensor:
    """The dropout keep-mask of one tile, reproducible from (seed, block origin, rows, tile)."""
    key = (((seed * 1_000_003 + origin) * 1_000_003 + q0) * 1_000_003 + t0) % (2 ** 63)
    gen = torch.Generator(device=device).manual_seed(key)
    return torch.rand(shape, generator=gen, device=device) >= p


def _tile_scores(q, k_tile, vis, rows, qs, origin, c, t0, t1, scale):
    """Hidden-filled, scaled scores of the query run against one key tile and the tile's
    visibility: [B, Z, rows of qs, t1 - t0]."""
    allowed = vis.allowed(_shift(qs, rows.start), slice(origin * c + t0, origin * c + t1))
    return fill_hidden((q[..., qs, :] @ k_tile.transpose(-1, -2)) * scale, allowed), allowed


class LeanRingAttention(torch.autograd.Function):
    """softmax(Q_n Kᵀ/√A + mask) V for the local rows, merging key tiles by log-sum-exp.

    Runs in float32 whatever the input dtype (the caller casts): the running max, sum and
    output are accumulators."""

    @staticmethod
    def forward(ctx, q, k, v, group, overlap, dropout_p, seed, vis):
        b, z, c, a = q.shape
        rows = _cols(group.rank, c)
        scale = 1.0 / math.sqrt(a)
        row_max = q.new_full((b, z, c, 1), mask_value(q.dtype))        # running max  [B,Z,c,1]
        row_sum = q.new_zeros(b, z, c, 1)                                # running Σ exp
        acc = torch.zeros_like(q)                                        # running Σ exp·V
        for origin, kv in ring_blocks(torch.stack([k, v]), group, overlap):
            for qs, t0, t1 in _lean_tiles(vis, rows, origin, c):
                s, _ = _tile_scores(q, kv[0, :, :, t0:t1], vis, rows, qs, origin, c, t0, t1,
                                    scale)
                WORK["score_entries"] += s.numel()
                old_max = row_max[..., qs, :]
                new_max = torch.maximum(old_max, s.amax(-1, keepdim=True))
                correction = torch.exp(old_max - new_max)
                p = torch.exp(s - new_max)                               # [B, Z, rows, tile]
                row_sum[..., qs, :] = row_sum[..., qs, :] * correction + p.sum(-1, keepdim=True)
                if dropout_p > 0:
                    keep = _tile_keep(seed, origin, qs.start, t0, p.shape, dropout_p, p.device)
                    p = p * keep / (1 - dropout_p)
                acc[..., qs, :] = acc[..., qs, :] * correction + p @ kv[1, :, :, t0:t1]
                row_max[..., qs, :] = new_max
        out = acc / row_sum
        # Saved instead of the [c, L] probabilities: the row max and sum, [B, Z, c, 1] each (a
        # log-sum-exp would round away log(L) next to a fully masked row's finite "-inf").
        ctx.save_for_backward(q, k, v, out, row_max, row_sum)
        ctx.group, ctx.overlap, ctx.dropout_p, ctx.seed = group, overlap, dropout_p, seed
        ctx.vis = vis
        return out

    @staticmethod
    def backward(ctx, d_out):                                            # [B, Z, c, A]
        q, k, v, out, row_max, row_sum = ctx.saved_tensors
        group, p_drop, vis = ctx.group, ctx.dropout_p, ctx.vis
        n, c, scale = group.size, q.shape[2], 1.0 / math.sqrt(q.shape[-1])
        rows = _cols(group.rank, c)
        delta = (d_out * out).sum(-1, keepdim=True)                      # rowsum(dO ∘ O)
        d_q = torch.zeros_like(q)
        ring = Ring(group)
        kv, acc = torch.stack([k, v]), None        # acc: the dK/dV accumulator we hold
        for step in range(n):
            origin = (group.rank - step) % n
            last = step + 1 == n
            # one exchange per step: the next K/V block and the previous step's accumulator
            # (its origin is this step's: it continues to the next rank)
            sends = ([kv] if not last else []) + ([acc] if acc is not None else [])
            if ctx.overlap and sends:
                ring.start(*sends)
            block = torch.zeros_like(kv)                                 # our dK, dV of it
            for qs, t0, t1 in _lean_tiles(vis, rows, origin, c):
                k_t, v_t = kv[0, :, :, t0:t1], kv[1, :, :, t0:t1]
                s, allowed = _tile_scores(q, k_t, vis, rows, qs, origin, c, t0, t1, scale)
                p = torch.exp(s - row_max[..., qs, :]) / row_sum[..., qs, :]   # exact probs
                d_o = d_out[..., qs, :]
                d_p = d_o @ v_t.transpose(-1, -2)
                p_used = p
                if p_drop > 0:
                    keep = _tile_keep(ctx.seed, origin, qs.start, t0, p.shape, p_drop, p.device)
                    keep = keep / (1 - p_drop)
                    d_p, p_used = d_p * keep, p * keep
                d_s = fill_hidden(p * (d_p - delta[..., qs, :]) * scale, allowed, 0.0)
                d_q[..., qs, :] += d_s @ k_t
                block[0, :, :, t0:t1] += d_s.transpose(-1, -2) @ q[..., qs, :]
                block[1, :, :, t0:t1] += p_used.transpose(-1, -2) @ d_o
            if ctx.overlap:
                got = ring.wait() if sends else []
                if not last:
                    kv = got.pop(0)
                acc = block if step == 0 else got[0] + block
            else:
                acc = block if step == 0 else acc + block
                ring.start(*(([kv] if not last else []) + [acc]))
                got = ring.wait()
                if not last:
                    kv = got.pop(0)
                acc = got[0]
        if ctx.overlap:                          # the last accumulator's final hop, home
            ring.start(acc)
            acc = ring.wait()[0]
        return d_q, acc[0], acc[1], None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# public entry point


def ring_self_attention(q, k, v, group: Group, key_mask: torch.Tensor | None = None,
                        dropout_p: float = 0.0, lean: bool = False, overlap: bool = True,
                        causal: bool = False, positions: torch.Tensor | None = None,
                        doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of the local query rows over the whole sequence held by ``group``.

    Args:
        q, k, v: ``[B, Z, c, A]``, this rank's chunk (layout slots ``[rank·c, (rank+1)·c)``).
        group: the sequence-parallel group (a group of one gives ordinary attention).
        key_mask: ``[B, L]`` bool over the full sequence in layout order, True = attend;
            ``None`` = no padding.
        dropout_p: attention dropout on the probabilities (pass 0 in eval mode).
        lean: the log-sum-exp mode that never forms the ``[c, L]`` score rows.
        overlap: post each ring transfer before the matmul on the current block.
        causal: each query sees the keys at its position and before.
        positions: ``[L]`` absolute position of every layout slot (:func:`layout_positions`);
            ``None`` = contiguous.
        doc_ids: ``[B, L]`` document id of every token in layout order (packed sequences).
    Returns:
        ``[B, Z, c, A]``: the attention output for the local rows.
    """
    vis = Visibility(key_mask, positions, causal, doc_ids)
    check_attention_inputs(q, k, v, vis, group)
    vis = vis.prepare(q.shape[2] * group.size, q.shape[2], q.device)
    if not lean:
        return _rsa(q, k, v, group, vis, dropout_p, overlap)
    seed = int(torch.randint(0, 2 ** 31 - 1, ())) if dropout_p > 0 else 0
    # The running max / sum / output are accumulators: float32 for any input dtype (bf16 or
    # fp16 inputs, under autocast or not). A custom Function's backward runs outside autocast.
    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        out = LeanRingAttention.apply(q.to(work), k.to(work), v.to(work), group, overlap,
                                      float(dropout_p), seed, vis)
    return out.to(dtype)
