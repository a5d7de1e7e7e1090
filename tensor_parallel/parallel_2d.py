"""Optimus 2D (arXiv 2104.05343) and Tesseract 2.5D (arXiv 2105.14500) layers.

Grid: ``q × q`` ranks per depth slice (2D: one slice; 2.5D: ``d`` slices). Rank ``(r, c)``:
``row`` group = ranks with the same ``r`` (group rank ``c``), ``col`` group = same ``c`` (group
rank ``r``); 2.5D adds ``dep`` (same ``(r, c)``, the ``d`` slices).

Layouts (``N`` tokens, ``k`` in, ``n`` out; weights stored in×out as in the papers):

* activation (r, c): batch chunk ``r`` (2.5D: chunk ``k·q + r`` of ``d·q``), hidden chunk ``c``
  → [b/q, s, h/q] (2.5D [b/(dq), s, h/q]);
* weight (r, c): W[r-th in-chunk, c-th out-chunk] → [k/q, n/q], identical in every depth slice;
* bias, LayerNorm γ/β, embedding tables: the column-``c`` block [n/q] is split once more over
  ``col`` ([n/q²] per rank) and all-gathered over ``col`` in the forward (backward:
  reduce-scatter, which also sums the different batch chunks' contributions).

2.5D is the paper's version: each depth slice runs 2D SUMMA on its own ``N/d`` tokens and every
parameter is used through ``copy_to_group(·, dep)``, so its gradient is all-reduced over the
depth axis (data-parallel-like). (ColossalAI's code splits the batch only over ``col`` and never
touches ``dep``, so its slices duplicate work; see the brief.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.errors import UsageError
from shared.parallel.comm import (all_gather, copy_to_group, raw_all_gather, raw_all_reduce,
                                  raw_broadcast, raw_reduce)
from shared.parallel.topology import Group


@dataclass
class Grid2D:
    """The groups of a 2D (``dep`` None) or 2.5D grid, seen from one rank."""
    row: Group
    col: Group
    dep: Group | None = None

    @property
    def q(self) -> int:
        return self.row.size

    @property
    def r(self) -> int:
        return self.col.rank

    @property
    def c(self) -> int:
        return self.row.rank


def _divisible(n: int, m: int, what: str, mode: str) -> int:
    if n % m:
        raise UsageError(f"{mode}: {what} = {n} is not divisible by {m}; choose {what} as a "
                         f"multiple of {m} (e.g. {n + (-n) % m}) or a smaller grid")
    return n // m


def _use(p: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """A parameter as seen by the forward: identity, and on 2.5D its gradient is all-reduced
    over the depth slices (which hold identical copies trained on different tokens)."""
    return copy_to_group(p, grid.dep) if grid.dep is not None else p


def _value(p: torch.Tensor) -> torch.Tensor:
    """Default ``pick`` of ``serial_state``: the parameter itself (``lambda p: p.grad`` for its
    gradient, ``lambda p: opt.state[p]["exp_avg"]`` for an optimizer moment)."""
    return p


def _gather(t: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    return raw_all_gather(t.detach(), dim, group)


class _SummaAB(torch.autograd.Function):
    """Y(r,c) = Σ_t X(r,t) · W(t,c) by q broadcast steps (SUMMA).

    forward  step t: X(r,t) broadcast along ``row`` from c=t; W(t,c) along ``col`` from r=t.
    backward dX(r,t) = Σ_c dY(r,c) W(t,c)ᵀ: broadcast W(t,c) along col, reduce to c=t along row.
             dW(t,c) = Σ_r X(r,t)ᵀ dY(r,c): broadcast X(r,t) along row, reduce to r=t along col.
    Per rank and Linear: 3(q−1)(N·k + k·n)/q² elements sent (the brief's cost model).

    Overlap (``OVERLAP.on``, default): every collective is asynchronous. Forward and backward
    post the broadcasts of step t+1 before computing step t (double buffering, as ColossalAI);
    the backward's reductions are waited for only after the last step's matmuls, so they run
    behind the following steps' compute. Off: each collective completes before the next matmul
    (same results; bench compares the two).
    """

    @staticmethod
    def forward(ctx, x, w, row, col):
        # under autocast, compute like autocast's matmul would: inputs in the autocast dtype
        # (half the bytes broadcast), partial products summed in fp32, output in that dtype
        kind = x.device.type
        dt = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        ctx.in_dtypes, ctx.row, ctx.col = (x.dtype, w.dtype), row, col
        if x.dtype != dt or w.dtype != dt:        # (fp32: the inputs themselves are saved)
            x, w = x.to(dt), w.to(dt)
        ctx.save_for_backward(x, w)
        y = x.new_zeros(x.shape[:-1] + (w.shape[1],),
                        dtype=torch.promote_types(dt, torch.float32))     # [b', s, n/q]
        with torch.autocast(kind, enabled=False):
            for xt, wt in _steps(lambda t: (raw_broadcast(x, t, row, async_op=True),
                                            raw_broadcast(w, t, col, async_op=True)), row.size):
                y += torch.matmul(xt, wt)
        return y.to(dt)

    @staticmethod
    def backward(ctx, dy):
        dx, dw = _SummaAB._backward(ctx, dy)
        return dx.to(ctx.in_dtypes[0]), dw.to(ctx.in_dtypes[1]), None, None

    @staticmethod
    def _backward(ctx, dy):
        x, w = ctx.saved_tensors
        row, col = ctx.row, ctx.col
        dy = dy.to(x.dtype).contiguous()
        dy2 = dy.reshape(-1, dy.shape[-1])                                # [N', n/q]
        x2 = x.reshape(-1, x.shape[-1])                                   # [N', k/q]
        to_dx, to_dw = [], []
        steps = _steps(lambda t: (raw_broadcast(w, t, col, async_op=True),    # W(t,c)
                                  raw_broadcast(x2, t, row, async_op=True)),  # X(r,t)
                       row.size)
        for t, (wt, xt) in enumerate(steps):
            to_dx.append(launch(raw_reduce(torch.matmul(dy, wt.t()), t, row, async_op=True)))
            to_dw.append(launch(raw_reduce(torch.matmul(xt.t(), dy2), t, col, async_op=True)))
        dx = [p.wait() for p in to_dx][row.rank]                          # dX(r,t) on c=t
        dw = [p.wait() for p in to_dw][col.rank]                          # dW(t,c) on r=t
        return dx, dw


class _Overlap:
    """Whether SUMMA overlaps its collectives with the matmuls (see :class:`_SummaAB`)."""
    on = True


OVERLAP = _Overlap()


def launch(pending):
    """An asynchronous collective, completed at once when overlap is off."""
    if not OVERLAP.on:
        pending.wait()
    return pending


def _steps(post, q):
    """Yield the waited results of ``post(t)`` for t = 0..q−1, posting step t+1 before
    yielding step t (double buffering) when overlap is on."""
    nxt = [launch(p) for p in post(0)]
    for t in range(q):
        cur = nxt
        if t + 1 < q:
            nxt = [launch(p) for p in post(t + 1)]
        yield [p.wait() for p in cur]


def summa_matmul(x: torch.Tensor, w: torch.Tensor, grid: Grid2D) -> torch.Tensor:
    """x [b', s, k/q] (hidden chunk c), w [k/q, n/q] → y [b', s, n/q] (hidden chunk c)."""
    return _SummaAB.apply(x, w, grid.row, grid.col)


def _block(full: torch.Tensor, i: int, j: int, q: int) -> torch.Tensor:
    """Block (i, j) of a q×q partition of a 2-D tensor."""
    a, b = full.shape[0] // q, full.shape[1] // q
    return full[i * a:(i + 1) * a, j * b:(j + 1) * b].clone()


def _sub(full: torch.Tensor, grid: Grid2D, dim: int = 0) -> torch.Tensor:
    """Sub-chunk ``r`` of chunk ``c`` of ``dim`` (the [n/q²] piece rank (r, c) stores)."""
    q = grid.q
    n = full.shape[dim] // (q * q)
    return full.narrow(dim, (grid.c * q + grid.r) * n, n).clone()


def _unsub(local: torch.Tensor, grid: Grid2D, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`_sub`: gather over col (sub-chunks), then over row (chunks)."""
    return _gather(_gather(local, dim, grid.col), dim, grid.row)


class Linear2D(nn.Module):
    """``Y = X W + b`` on a 2D/2.5D grid: W block (r, c) [k/q, n/q]; bias piece [n/q²]."""

    def __init__(self, linear: nn.Linear, grid: Grid2D, mode: str = "2d"):
        super().__init__()
        q = grid.q
        self.grid, self.in_features, self.out_features = grid, linear.in_features, linear.out_features
        _divisible(linear.in_features, q, "in_features", mode)
        _divisible(linear.out_features, q, "out_features", mode)
        w = linear.weight.detach().t()                                    # [k, n]
        self.weight = nn.Parameter(_block(w, grid.r, grid.c, q))          # [k/q, n/q]
        self.bias = None
        if linear.bias is not None:
            _divisible(linear.out_features, q * q, "out_features (bias split over q²)", mode)
            self.bias = nn.Parameter(_sub(linear.bias.detach(), grid))    # [n/q²]

    def forward(self, x):                                                 # [b', s, k/q]
        y = summa_matmul(x, _use(self.weight, self.grid), self.grid)      # [b', s, n/q]
        if self.bias is not None:
            y = y + all_gather(_use(self.bias, self.grid), 0, self.grid.col)   # + [n/q]
        return y

    def serial_state(self, pick=None) -> dict:
        pick = pick or _value
        w = pick(self.weight)
        full = _gather(_gather(w, 1, self.grid.row), 0, self.grid.col)   # [k, n]
        out = {"weight": full.t().contiguous()}
        if self.bias is not None:
            out["bias"] = _unsub(pick(self.bias), self.grid)
        return out


class _DistNormalize(torch.autograd.Function):
    """x̂ = (x − mean) / sqrt(var + eps) over a hidden dim split across ``group``, in fp32.

    Forward, two passes: Σx all-reduced, then Σ(x − mean)² (the one-pass E[x²] − E[x]² cancels
    catastrophically when |mean| ≫ std: at mean 1e3, std 1 its fp32 error is ~0.5). Saves only
    x̂ and 1/σ. Backward (the LayerNorm adjoint): dx = (g − mean(g) − x̂·mean(g·x̂)) / σ, with
    Σg and Σg·x̂ all-reduced in one call."""

    @staticmethod
    def forward(ctx, x, group, hidden, eps):
        xf = x.float()
        mean = raw_all_reduce(xf.sum(-1, keepdim=True), group) / hidden
        xc = xf - mean
        var = raw_all_reduce((xc * xc).sum(-1, keepdim=True), group) / hidden
        rstd = torch.rsqrt(var + eps)
        xhat = xc * rstd
        ctx.group, ctx.hidden, ctx.dtype = group, hidden, x.dtype
        ctx.save_for_backward(xhat, rstd)
        return xhat.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        xhat, rstd = ctx.saved_tensors
        g = g.float()
        sums = raw_all_reduce(torch.cat([g.sum(-1, keepdim=True),
                                         (g * xhat).sum(-1, keepdim=True)], -1), ctx.group)
        mg, mgx = (sums / ctx.hidden).split(1, -1)
        return ((g - mg - xhat * mgx) * rstd).to(ctx.dtype), None, None, None


def dist_normalize(x: torch.Tensor, group: Group, hidden: int, eps: float) -> torch.Tensor:
    """The normalisation of a LayerNorm whose ``hidden`` features are split across ``group``."""
    return _DistNormalize.apply(x, group, hidden, eps)


class LayerNorm2D(nn.Module):
    """LayerNorm over a hidden dim split along ``row``: two-pass statistics (Σx, then
    Σ(x − mean)², each all-reduced over ``row``; backward one all-reduce of (Σg, Σg·x̂);
    :func:`dist_normalize`); γ, β stored as [h/q²] pieces like the bias."""

    def __init__(self, ln: nn.LayerNorm, grid: Grid2D, mode: str = "2d"):
        super().__init__()
        self.grid, self.eps, self.hidden = grid, ln.eps, ln.normalized_shape[0]
        _divisible(self.hidden, grid.q * grid.q, "hidden (LayerNorm split over q²)", mode)
        self.weight = nn.Parameter(_sub(ln.weight.detach(), grid))
        self.bias = nn.Parameter(_sub(ln.bias.detach(), grid))

    def forward(self, x):                                                 # [b', s, h/q]
        xhat = dist_normalize(x, self.grid.row, self.hidden, self.eps)
        g = all_gather(_use(self.weight, self.grid), 0, self.grid.col)    # [h/q]
        b = all_gather(_use(self.bias, self.grid), 0, self.grid.col)
        return xhat * g + b

    def serial_state(self, pick=None) -> dict:
        pick = pick or _value
        return {"weight": _unsub(pick(self.weight), self.grid),
                "bias": _unsub(pick(self.bias), self.grid)}


class Embedding2D(nn.Module):
    """Embedding [V, h] split on the hidden dim: rank (r, c) stores columns piece [V, h/q²],
    all-gathered over ``col`` to the column-``c`` block [V, h/q]; ids are the local batch."""

    def __init__(self, emb: nn.Embedding, grid: Grid2D, mode: str = "2d"):
        super().__init__()
        self.grid = grid
        _divisible(emb.embedding_dim, grid.q * grid.q, "hidden (embedding split over q²)", mode)
        self.weight = nn.Parameter(_sub(emb.weight.detach(), grid, dim=1))   # [V, h/q²]

    def forward(self, ids):                                               # [b', s] → [b', s, h/q]
        table = all_gather(_use(self.weight, self.grid), 1, self.grid.col)
        return F.embedding(ids, table)

    def serial_state(self, pick=None) -> dict:
        pick = pick or _value
        return {"weight": _unsub(pick(self.weight), self.grid, dim=1)}
