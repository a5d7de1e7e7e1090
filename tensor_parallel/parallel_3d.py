"""3D tensor parallelism (Bian et al., arXiv 2105.14450) on a ``q × q × q`` cube.

Rank ``t = i + q·j + q²·k``: ``weight`` group varies ``i``, ``input`` varies ``j``, ``output``
varies ``k``; ``input_x_weight`` varies (i, j), ``output_x_weight`` varies (i, k).

A Linear3D is built with three groups ``inp``, ``out``, ``wgt`` (see :class:`Groups3D`):

* input X: batch block ``wgt·q + inp`` of q², hidden block ``out`` → [b/q², s, k/q];
* weight W (in×out): in-block ``out``, sub-block ``wgt`` of it, out-block ``inp`` → [k/q², n/q];
* forward: all-gather X over ``inp`` (batch) → [b/q, s, k/q]; all-gather W over ``wgt`` →
  [k/q, n/q]; local matmul (a partial sum over the ``out`` ranks); reduce-scatter over ``out``
  (batch) → Y [b/q², s, n/q]: batch block ``wgt·q + out``, hidden block ``inp``;
* backward (the adjoints, from shared.parallel.comm): all-gather dY over ``out``, dX reduce-scatter over
  ``inp``, dW reduce-scatter over ``wgt``. Per rank: 2(q−1)(N·k + k·n + N·n)/q³ elements.

Because Y's hidden block is indexed by the ``inp`` coordinate, the next Linear3D swaps ``inp`` and
``out`` (:meth:`Groups3D.swapped`). A transformer block has an even number of Linear3D between
residual adds (qkv+proj, fc1+fc2), so LayerNorms and residuals always see the original layout.
Unlike ColossalAI, which swaps a global state in every constructor (so layers must be built in
execution order), each layer here is given its groups explicitly.

Bias [n/q] (out-block ``inp``) is replicated over the ``wgt × out`` ranks that hold the same
hidden block, and used through ``copy_to_group`` over that group (backward: all-reduce of the
gradient). LayerNorm3D γ, β [h/q] likewise over ``input_x_weight``; its Σx and then
Σ(x − mean)² are all-reduced over ``output`` (the ranks holding the other hidden blocks of the same rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.errors import UsageError
from shared.parallel.comm import (all_gather, copy_to_group, raw_all_gather,
                                  raw_reduce_scatter)
from shared.parallel.topology import Group

from .parallel_2d import dist_normalize, launch


@dataclass
class Groups3D:
    """The groups one Linear3D uses. ``bias`` = the ``wgt × out`` group (size q²)."""
    inp: Group
    out: Group
    wgt: Group
    bias: Group

    @classmethod
    def from_topology(cls, topo) -> "Groups3D":
        return cls(topo["input"], topo["output"], topo["weight"], topo["output_x_weight"])

    def swapped(self, topo) -> "Groups3D":
        """Roles after one Linear3D: input ↔ output."""
        if self.inp is topo["input"]:
            return Groups3D(topo["output"], topo["input"], topo["weight"], topo["input_x_weight"])
        return Groups3D.from_topology(topo)

    @property
    def q(self) -> int:
        return self.wgt.size


def _divisible(n: int, m: int, what: str) -> int:
    if n % m:
        raise UsageError(f"3d: {what} = {n} is not divisible by {m}; choose {what} as a "
                         f"multiple of {m} (e.g. {n + (-n) % m}) or a smaller cube")
    return n // m


def _value(p: torch.Tensor) -> torch.Tensor:
    """Default ``pick`` of ``serial_state``: the parameter itself (``lambda p: p.grad`` for its
    gradient, ``lambda p: opt.state[p]["exp_avg"]`` for an optimizer moment)."""
    return p


def _gather(t: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    return raw_all_gather(t.detach(), dim, group)


class _Matmul3D(torch.autograd.Function):
    """``Y = reduce_scatter_out(all_gather_inp(X) · all_gather_wgt(W))`` and its adjoint.

    forward: the two all-gathers are posted together, then the matmul, then the reduce-scatter.
    backward: all-gather dY over ``out``; dX = dY·Wᵀ is reduce-scattered over ``inp`` while
    dW = Xᵀ·dY is computed, then dW is reduce-scattered over ``wgt``.

    ``regather`` False (the papers' 3D): the gathered X [b/q, s, k/q] and W [k/q, n/q] (q× the
    local blocks) are saved for backward. True: only the local blocks are saved and backward
    gathers them again: the saved activations and weights shrink q×, and each Linear sends
    (q−1)(N·k + k·n)/q³ more elements per rank (4/3 of the papers' volume when N·n is small).
    Overlap (``OVERLAP.on`` of :mod:`.parallel_2d`) off: every collective completes at once.
    Under autocast, X and W are cast to the autocast dtype before they are sent (as in SUMMA).
    """

    @staticmethod
    def forward(ctx, x, w, g: "Groups3D", regather: bool):
        kind = x.device.type
        dt = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        ctx.in_dtypes, ctx.g, ctx.regather = (x.dtype, w.dtype), g, regather
        x, w = x.to(dt), w.to(dt)
        px = launch(raw_all_gather(x, 0, g.inp, async_op=True))
        pw = launch(raw_all_gather(w, 0, g.wgt, async_op=True))
        xg, wg = px.wait(), pw.wait()                                      # [b/q,s,k/q] [k/q,n/q]
        ctx.save_for_backward(*((x, w) if regather else (xg, wg)))
        with torch.autocast(kind, enabled=False):
            return raw_reduce_scatter(torch.matmul(xg, wg), 0, g.out)

    @staticmethod
    def backward(ctx, dy):
        g = ctx.g
        xg, wg = ctx.saved_tensors             # the gathered blocks, or the local ones to regather
        pdy = launch(raw_all_gather(dy.to(xg.dtype), 0, g.out, async_op=True))
        if ctx.regather:
            pw = launch(raw_all_gather(wg, 0, g.wgt, async_op=True))
            px = launch(raw_all_gather(xg, 0, g.inp, async_op=True))
            wg = pw.wait()
        dyg = pdy.wait()                                                   # [b/q, s, n/q]
        dx = launch(raw_reduce_scatter(torch.matmul(dyg, wg.t()), 0, g.inp, async_op=True))
        if ctx.regather:
            xg = px.wait()
        dw = torch.matmul(xg.reshape(-1, xg.shape[-1]).t(), dyg.reshape(-1, dyg.shape[-1]))
        dw = raw_reduce_scatter(dw, 0, g.wgt)
        return dx.wait().to(ctx.in_dtypes[0]), dw.to(ctx.in_dtypes[1]), None, None


class Linear3D(nn.Module):
    """``Y = X W + b`` on the cube (layout in the module docstring)."""

    def __init__(self, linear: nn.Linear, g: Groups3D):
        super().__init__()
        q = g.q
        self.g, self.in_features, self.out_features = g, linear.in_features, linear.out_features
        kq2 = _divisible(linear.in_features, q * q, "in_features")
        nq = _divisible(linear.out_features, q, "out_features")
        w = linear.weight.detach().t()                                     # [k, n]
        row0 = g.out.rank * kq2 * q + g.wgt.rank * kq2
        self.weight = nn.Parameter(w[row0:row0 + kq2, g.inp.rank * nq:(g.inp.rank + 1) * nq].clone())
        self.regather = False
        self.bias = None
        if linear.bias is not None:                                        # [n/q], block inp
            self.bias = nn.Parameter(linear.bias.detach()[g.inp.rank * nq:(g.inp.rank + 1) * nq].clone())

    def forward(self, x):                                                  # [b/q², s, k/q]
        y = _Matmul3D.apply(x, self.weight, self.g, self.regather)        # [b/q², s, n/q]
        if self.bias is not None:
            y = y + copy_to_group(self.bias, self.g.bias)
        return y

    def serial_state(self, pick=None) -> dict:
        pick = pick or _value
        g = self.g
        w = pick(self.weight)
        full = _gather(_gather(_gather(w, 0, g.wgt), 0, g.out), 1, g.inp)  # [k, n]
        out = {"weight": full.t().contiguous()}
        if self.bias is not None:
            out["bias"] = _gather(pick(self.bias), 0, g.inp)
        return out


class LayerNorm3D(nn.Module):
    """LayerNorm of activations [b/q², s, h/q] (hidden block = ``output`` coordinate); the
    statistics are two-pass (Σx, then Σ(x − mean)², all-reduced over ``output``)."""

    def __init__(self, ln: nn.LayerNorm, topo):
        super().__init__()
        self.out, self.rep = topo["output"], topo["input_x_weight"]
        self.eps, self.hidden = ln.eps, ln.normalized_shape[0]
        hq = _divisible(self.hidden, self.out.size, "hidden")
        k = self.out.rank
        self.weight = nn.Parameter(ln.weight.detach()[k * hq:(k + 1) * hq].clone())
        self.bias = nn.Parameter(ln.bias.detach()[k * hq:(k + 1) * hq].clone())

    def forward(self, x):
        xhat = dist_normalize(x, self.out, self.hidden, self.eps)   # two-pass, over ``output``
        g = copy_to_group(self.weight, self.rep)
        b = copy_to_group(self.bias, self.rep)
        return xhat * g + b

    def serial_state(self, pick=None) -> dict:
        pick = pick or _value
        return {"weight": _gather(pick(self.weight), 0, self.out),
                "bias": _gather(pick(self.bias), 0, self.out)}


class Embedding3D(nn.Module):
    """Embedding [V, h]: rank (i, j, k) stores the piece [V, h/q²] (sub-block ``i`` of hidden
    block ``k``); the forward all-gathers it over ``weight`` to [V, h/q] and the ranks along
    ``input`` share the same piece (gradient all-reduced over ``input``)."""

    def __init__(self, emb: nn.Embedding, topo):
        super().__init__()
        self.inp, self.out, self.wgt = topo["input"], topo["output"], topo["weight"]
        q = self.wgt.size
        piece = _divisible(emb.embedding_dim, q * q, "hidden (embedding split over q²)")
        start = (self.out.rank * q + self.wgt.rank) * piece
        self.weight = nn.Parameter(emb.weight.detach()[:, start:start + piece].clone())

    def forward(self, ids):                                                # [b/q², s] → [.., h/q]
        table = all_gather(copy_to_group(self.weight, self.inp), 1, self.wgt)
        return F.embedding(ids, table)

    def serial_state(self, pick=None) -> dict:
        pick = pick or _value
        w = pick(self.weight)
        return {"weight": _gather(_gather(w, 1, self.wgt), 1, self.out)}
