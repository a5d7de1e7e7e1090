"""Megatron 1D layers (shared/tp1d.py) against serial PyTorch built from the same full weights.

Tolerance: float32, relative to the largest magnitude of the reference tensor, 1e-5. The parallel
layers compute the same products with the reduction split into P partial sums (all-reduced), so
the only difference is summation order: a few ulps (eps = 1.2e-7) times the number of terms
(< 100 here) is below 1e-5.

Sizes are not powers of two (k=15, n=21·P, batch 3, seq 5, vocab 13·P) and P ∈ {2, 3, 4}.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.parallel import build_topology, spawn
from shared.parallel.tp1d import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                         parallel_dropout, vocab_parallel_cross_entropy)
from shared.parallel.seeding import RNGStreams

TOL = 1e-5


def _close(name, got, want, tol=TOL):
    err = (got - want).abs().max().item()
    scale = max(want.abs().max().item(), 1e-12)
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} x {scale:.3g}"


def _chunk(t, dim, g):
    n = t.shape[dim] // g.size
    return t.narrow(dim, g.rank * n, n)


def _check_all(env):
    topo = build_topology("1d")
    g = topo["tensor"]
    p = g.size
    torch.manual_seed(0)                       # same full tensors on every rank
    k, n, b, s = 15, 21 * p, 3, 5
    x = torch.randn(b, s, k)
    dy = torch.randn(b, s, n)

    # column-parallel, output kept split and gathered
    serial = nn.Linear(k, n)
    for gather in (False, True):
        col = ColumnParallelLinear.from_serial(serial, g, gather_output=gather)
        xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        ys = serial(xs)
        yp = col(xp)
        _close("column y", yp, ys if gather else _chunk(ys, -1, g))
        ys.backward(dy)
        yp.backward(dy if gather else _chunk(dy, -1, g))
        _close("column dX", xp.grad, xs.grad)
        _close("column dW", col.weight.grad, _chunk(serial.weight.grad, 0, g))
        _close("column db", col.bias.grad, _chunk(serial.bias.grad, 0, g))
        serial.zero_grad()
        back = col.to_serial()
        _close("column to_serial", back.weight, serial.weight)

    # row-parallel, input already split and split here
    serial = nn.Linear(n, k)
    x2 = torch.randn(b, s, n)
    dy2 = torch.randn(b, s, k)
    for parallel_in in (True, False):
        row = RowParallelLinear.from_serial(serial, g, input_is_parallel=parallel_in)
        xs = x2.clone().requires_grad_()
        xp = (_chunk(x2, -1, g) if parallel_in else x2).clone().requires_grad_()
        ys, yp = serial(xs), row(xp)
        _close("row y", yp, ys)
        ys.backward(dy2)
        yp.backward(dy2)
        _close("row dX", xp.grad, _chunk(xs.grad, -1, g) if parallel_in else xs.grad)
        _close("row dW", row.weight.grad, _chunk(serial.weight.grad, 1, g))
        _close("row db", row.bias.grad, serial.bias.grad)
        serial.zero_grad()
        _close("row to_serial", row.to_serial().weight, serial.weight)

    # vocab-parallel embedding
    vocab = 13 * p
    emb = nn.Embedding(vocab, k)
    ids = torch.randint(0, vocab, (b, s))
    pemb = VocabParallelEmbedding.from_serial(emb, g)
    e_s, e_p = emb(ids), pemb(ids)
    _close("embedding", e_p, e_s)
    de = torch.randn_like(e_s)
    e_s.backward(de)
    e_p.backward(de)
    _close("embedding dE", pemb.weight.grad, _chunk(emb.weight.grad, 0, g))
    _close("embedding to_serial", pemb.to_serial().weight, emb.weight)

    # vocab-parallel cross-entropy, with ignored positions
    logits = torch.randn(b, s, vocab) * 3
    targets = torch.randint(0, vocab, (b, s))
    targets[0, 1] = -100
    ls = logits.clone().requires_grad_()
    lp = _chunk(logits, -1, g).clone().requires_grad_()
    loss_s = F.cross_entropy(ls.view(-1, vocab), targets.view(-1), reduction="none").view(b, s)
    loss_p = vocab_parallel_cross_entropy(lp, targets, g)
    _close("cross-entropy", loss_p, loss_s)
    assert loss_p[0, 1].item() == 0.0
    loss_s.mean().backward()
    loss_p.mean().backward()
    _close("cross-entropy dlogits", lp.grad, _chunk(ls.grad, -1, g))

    # dtype and device: from_serial keeps a bf16 module's dtype (a bf16 block runs), to_serial
    # gives back the layers' dtype; bf16 tolerance 2e-2 relative (8 mantissa bits: 2^-8 = 4e-3
    # per rounding, a few roundings of the partial sums and their all-reduce)
    bf = torch.bfloat16
    fc1, fc2 = nn.Linear(k, n).to(bf), nn.Linear(n, k).to(bf)
    emb16 = nn.Embedding(vocab, k).to(bf)
    pfc1, pfc2 = ColumnParallelLinear.from_serial(fc1, g), RowParallelLinear.from_serial(fc2, g)
    pemb16 = VocabParallelEmbedding.from_serial(emb16, g)
    for layer in (pfc1, pfc2, pemb16):
        assert all(p.dtype == bf and p.device == x.device for p in layer.parameters()), layer
    h16 = emb16(ids) + x.to(bf)
    ys16 = fc2(F.gelu(fc1(h16)))
    yp16 = pfc2(F.gelu(pfc1(pemb16(ids) + x.to(bf))))
    assert yp16.dtype == bf
    _close("bf16 block", yp16.float(), ys16.float(), tol=2e-2)
    for layer, ref in ((pfc1, fc1), (pfc2, fc2), (pemb16, emb16)):
        back = layer.to_serial()
        assert type(back) is type(ref)
        for (name, got), want in zip(back.named_parameters(), ref.parameters()):
            assert got.dtype == bf and got.device == want.device, name
            assert torch.equal(got, want), f"{type(layer).__name__}.to_serial {name}"

    # dropout streams: replicated masks agree across ranks, sharded masks differ
    streams = RNGStreams(7, grid_rank=g.rank)
    ones = torch.ones(4096)
    rep = parallel_dropout(ones, 0.5, True, streams, "replicated")
    shd = parallel_dropout(ones, 0.5, True, streams, "sharded")
    return rep.nonzero().sum().item(), shd.nonzero().sum().item()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_tp1d_layers_match_serial(world):
    results = spawn(_check_all, world)
    reps = {r[0] for r in results}
    shds = {r[1] for r in results}
    assert len(reps) == 1, "replicated dropout masks differ across ranks"
    assert len(shds) == world, "sharded dropout masks repeat across ranks"


def test_tp1d_rejects_indivisible_sizes():
    from shared.parallel.topology import Group
    g = Group("1d.tensor", (0, 1, 2, 3), 0, None)
    with pytest.raises(ValueError, match="out_features = 10 is not divisible by the 4 ranks"):
        ColumnParallelLinear(8, 10, g)
    with pytest.raises(ValueError, match="in_features"):
        RowParallelLinear(10, 8, g)
    with pytest.raises(ValueError, match="vocabulary"):
        VocabParallelEmbedding(30, 8, g)
