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

Overlap: in every ring pass the next block's send/receive is posted (``RingExchange.start``)
before the current block's matmul and waited for after it. ``overlap=False`` posts it after the
matmul (the reference's behaviour), for the benchmark.
"""
from __future__ import annotations

import math

import torch

from shared.errors import UsageError
from shared.parallel.comm import RingExchange, raw_reduce_scatter
from shared.parallel.topology import Group

from .models.bert import mask_value, masked_scores

# ----------------------------------------------------------------------------------------------
# helpers


def check_sequence_split(seq_len: int, n: int) -> int:
    """Tokens per rank ``c = L/N``; a clear error when the sequence cannot be split evenly."""
    if n > seq_len:
        raise UsageError(f"sequence parallelism over {n} ranks needs at least {n} tokens, but the "
                         f"sequence has {seq_len}; use fewer ranks or a longer sequence")
    if seq_len % n:
        lower, upper = seq_len - seq_len % n, seq_len + n - seq_len % n
        raise UsageError(f"sequence length {seq_len} is not divisible by the {n} ranks of the "
                         f"sequence group; pad or cut it to {lower} or {upper} (--seq_len), or "
                         f"use a number of ranks that divides {seq_len}")
    return seq_len // n


def check_attention_inputs(q, k, v, key_mask, group: Group) -> None:
    """Shapes of the local chunks and of the full-sequence key mask, checked before any work."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise UsageError(f"q, k, v must all be [B, Z, c, A] local chunks of the same shape; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, _, c, _ = q.shape
    length = c * group.size
    if key_mask is not None and tuple(key_mask.shape) != (b, length):
        raise UsageError(f"key mask must cover the full sequence, shape [B, L] = [{b}, {length}] "
                         f"({group.size} ranks x {c} local tokens); got {tuple(key_mask.shape)}")
    if key_mask is not None and key_mask.dtype != torch.bool:
        raise UsageError(f"key mask must be a bool tensor (True = attend); got {key_mask.dtype}")


def ring_blocks(x: torch.Tensor, group: Group, overlap: bool = True):
    """Yield ``(origin, block)`` for the N blocks of ``x`` circulating the ring, ours first.

    At step i the block held came from group rank ``(rank - i) mod N``. With ``overlap`` the next
    transfer is posted before the caller computes on the current block (between the yields).
    """
    n, rank = group.size, group.rank
    ring = RingExchange(group)
    block = x
    for step in range(n):
        last = step + 1 == n
        if overlap and not last:
            ring.start(block)
        yield (rank - step) % n, block
        if not last:
            if not overlap:
                ring.start(block)
            block = ring.wait()


def _cols(origin: int, c: int) -> slice:
    return slice(origin * c, (origin + 1) * c)


# ----------------------------------------------------------------------------------------------
# paper mode: Ring-QK and Ring-AV


class RingQK(torch.autograd.Function):
    """S_n = Q_n [K_0 | K_1 | … | K_{N-1}]ᵀ: [B, Z, c, A] x N blocks → [B, Z, c, L]."""

    @staticmethod
    def forward(ctx, q, k, group, overlap):
        b, z, c, _ = q.shape
        scores = q.new_empty(b, z, c, c * group.size)                   # [B, Z, c, L]
        for origin, k_block in ring_blocks(k, group, overlap):
            scores[..., _cols(origin, c)] = q @ k_block.transpose(-1, -2)
        ctx.save_for_backward(q, k)                                      # local chunks only
        ctx.group, ctx.overlap = group, overlap
        return scores

    @staticmethod
    def backward(ctx, d_scores):                                         # [B, Z, c, L]
        q, k = ctx.saved_tensors
        c = q.shape[2]
        # dK: every rank's full-length partial dS_nᵀ Q_n [B, Z, L, A], summed, our slice kept
        d_k = raw_reduce_scatter(d_scores.transpose(-1, -2) @ q, 2, ctx.group, async_op=True)
        d_q = torch.zeros_like(q)
        for origin, k_block in ring_blocks(k, ctx.group, ctx.overlap):  # second pass of K
            d_q += d_scores[..., _cols(origin, c)] @ k_block
        return d_q, d_k.wait(), None, None


class RingAV(torch.autograd.Function):
    """O_n = Σ_j P_n[:, :, :, block j] V_j: [B, Z, c, L], N blocks [B, Z, c, A] → [B, Z, c, A]."""

    @staticmethod
    def forward(ctx, probs, v, group, overlap):
        c = v.shape[2]
        out = torch.zeros_like(v)
        for origin, v_block in ring_blocks(v, group, overlap):
            out += probs[..., _cols(origin, c)] @ v_block
        ctx.save_for_backward(probs, v)
        ctx.group, ctx.overlap = group, overlap
        return out

    @staticmethod
    def backward(ctx, d_out):                                            # [B, Z, c, A]
        probs, v = ctx.saved_tensors
        c = v.shape[2]
        d_v = raw_reduce_scatter(probs.transpose(-1, -2) @ d_out, 2, ctx.group, async_op=True)
        d_probs = torch.empty_like(probs)
        for origin, v_block in ring_blocks(v, ctx.group, ctx.overlap):  # second pass of V
            d_probs[..., _cols(origin, c)] = d_out @ v_block.transpose(-1, -2)
        return d_probs, d_v.wait(), None, None


def _rsa(q, k, v, group, key_mask, dropout_p, overlap):
    scores = RingQK.apply(q, k, group, overlap) * (1.0 / math.sqrt(q.shape[-1]))
    probs = torch.softmax(masked_scores(scores, key_mask), dim=-1)       # complete local rows
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, dropout_p, training=True)
    # softmax runs in float32 under autocast; the ring matmuls take one dtype (backward runs
    # outside autocast)
    return RingAV.apply(probs.to(v.dtype), v, group, overlap)


# ----------------------------------------------------------------------------------------------
# memory-lean mode: log-sum-exp merge, no [c, L] block


LEAN_TILE = 128
"""Keys per tile in the lean mode: each received block is processed in tiles of this many keys,
so the largest temporary is [B, Z, c, LEAN_TILE] whatever the sequence length."""


def _tiles(c: int):
    return [(t0, min(c, t0 + LEAN_TILE)) for t0 in range(0, c, LEAN_TILE)]


def _tile_keep(seed: int, origin: int, t0: int, shape, p: float, device) -> torch.Tensor:
    """The dropout keep-mask of one key tile, reproducible from (seed, block origin, tile)."""
    key = ((seed * 1_000_003 + origin) * 1_000_003 + t0) % (2 ** 63)
    gen = torch.Generator(device=device).manual_seed(key)
    return torch.rand(shape, generator=gen, device=device) >= p


def _tile_scores(q, k_tile, key_mask, origin, c, t0, t1, scale):
    """Masked, scaled scores of the local rows against one key tile: [B, Z, c, t1 - t0]."""
    tile_mask = None if key_mask is None else key_mask[:, origin * c + t0:origin * c + t1]
    return masked_scores((q @ k_tile.transpose(-1, -2)) * scale, tile_mask), tile_mask


class LeanRingAttention(torch.autograd.Function):
    """softmax(Q_n Kᵀ/√A + mask) V for the local rows, merging key tiles by log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, group, overlap, dropout_p, seed):
        b, z, c, a = q.shape
        scale = 1.0 / math.sqrt(a)
        row_max = q.new_full((b, z, c, 1), mask_value(q.dtype))        # running max  [B,Z,c,1]
        row_sum = q.new_zeros(b, z, c, 1)                                # running Σ exp
        acc = torch.zeros_like(q)                                        # running Σ exp·V
        for origin, kv in ring_blocks(torch.stack([k, v]), group, overlap):
            for t0, t1 in _tiles(c):
                s, _ = _tile_scores(q, kv[0, :, :, t0:t1], key_mask, origin, c, t0, t1, scale)
                new_max = torch.maximum(row_max, s.amax(-1, keepdim=True))
                correction = torch.exp(row_max - new_max)
                p = torch.exp(s - new_max)                               # [B, Z, c, tile]
                row_sum = row_sum * correction + p.sum(-1, keepdim=True)
                if dropout_p > 0:
                    keep = _tile_keep(seed, origin, t0, p.shape, dropout_p, p.device)
                    p = p * keep / (1 - dropout_p)
                acc = acc * correction + p @ kv[1, :, :, t0:t1]
                row_max = new_max
        out = acc / row_sum
        # Saved instead of the [c, L] probabilities: the row max and sum, [B, Z, c, 1] each (a
        # log-sum-exp would round away log(L) next to a fully masked row's finite "-inf").
        mask = key_mask if key_mask is not None else q.new_empty(0)
        ctx.save_for_backward(q, k, v, out, row_max, row_sum, mask)
        ctx.group, ctx.overlap, ctx.dropout_p, ctx.seed = group, overlap, dropout_p, seed
        ctx.has_mask = key_mask is not None
        return out

    @staticmethod
    def backward(ctx, d_out):                                            # [B, Z, c, A]
        q, k, v, out, row_max, row_sum, mask = ctx.saved_tensors
        key_mask = mask if ctx.has_mask else None
        group, p_drop = ctx.group, ctx.dropout_p
        c, scale = q.shape[2], 1.0 / math.sqrt(q.shape[-1])
        delta = (d_out * out).sum(-1, keepdim=True)                      # rowsum(dO ∘ O)
        d_q = torch.zeros_like(q)
        acc_ring = RingExchange(group)
        for step, (origin, kv) in enumerate(ring_blocks(torch.stack([k, v]), group, ctx.overlap)):
            block = torch.empty_like(kv)                                 # our dK, dV of the block
            for t0, t1 in _tiles(c):
                k_t, v_t = kv[0, :, :, t0:t1], kv[1, :, :, t0:t1]
                s, tile_mask = _tile_scores(q, k_t, key_mask, origin, c, t0, t1, scale)
                p = torch.exp(s - row_max) / row_sum                     # exact probabilities
                d_p = d_out @ v_t.transpose(-1, -2)
                p_used = p
                if p_drop > 0:
                    keep = _tile_keep(ctx.seed, origin, t0, p.shape, p_drop, p.device)
                    keep = keep / (1 - p_drop)
                    d_p, p_used = d_p * keep, p * keep
                d_s = masked_scores(p * (d_p - delta) * scale, tile_mask, 0.0)  # padded: no grad
                d_q += d_s @ k_t
                block[0, :, :, t0:t1] = d_s.transpose(-1, -2) @ q
                block[1, :, :, t0:t1] = p_used.transpose(-1, -2) @ d_out
            d_kv = block if step == 0 else acc_ring.wait() + block      # this block's accumulator
            acc_ring.start(d_kv)                                         # on to the next rank
        d_kv = acc_ring.wait()                                           # ours, home after N hops
        return d_q, d_kv[0], d_kv[1], None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# public entry point


def ring_self_attention(q, k, v, group: Group, key_mask: torch.Tensor | None = None,
                        dropout_p: float = 0.0, lean: bool = False,
                        overlap: bool = True) -> torch.Tensor:
    """Attention of the local query rows over the whole sequence held by ``group``.

    Args:
        q, k, v: ``[B, Z, c, A]``, this rank's chunk (tokens ``[rank·c, (rank+1)·c)``).
        group: the sequence-parallel group (a group of one gives ordinary attention).
        key_mask: ``[B, L]`` bool over the full sequence, True = attend; ``None`` = no padding.
        dropout_p: attention dropout on the probabilities (pass 0 in eval mode).
        lean: the log-sum-exp mode that never forms the ``[c, L]`` score rows.
        overlap: post each ring transfer before the matmul on the current block.
    Returns:
        ``[B, Z, c, A]``: the attention output for the local rows.
    """
    check_attention_inputs(q, k, v, key_mask, group)
    if not lean:
        return _rsa(q, k, v, group, key_mask, dropout_p, overlap)
    seed = int(torch.randint(0, 2 ** 31 - 1, ())) if dropout_p > 0 else 0
    # The running max / sum / output must not be rounded to bf16, and a custom Function's
    # backward runs outside autocast: under autocast the lean mode computes in float32.
    dtype = q.dtype
    with torch.autocast(q.device.type, enabled=False):
        out = LeanRingAttention.apply(q.float(), k.float(), v.float(), key_mask, group, overlap,
                                      float(dropout_p), seed)
    return out.to(dtype)
