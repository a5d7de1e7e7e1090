"""Causal ring attention (contiguous and zigzag placement), packed documents, all-to-all
(Ulysses) sequence parallelism, the batched ring, the lean mode's float32 accumulators and the
stable maximum-length root, against serial references.

One spawn per world size (2 and 4 gloo ranks) runs every distributed check and returns errors;
the tests assert on them. The real length is odd (13 tokens, padded to 16 so that it splits into
2N chunks), heads 4 (divisible by 4 ranks for all-to-all), head dim 5.

Tolerances: float64 1e-10 relative (observed ~1e-16), float32 1e-5 (a different summation
order moves results by a few ulps); a wrong mask, block origin or placement gives errors of
order 0.1-1.
"""
import random

import numpy as np

import pytest
import torch

from shared.errors import UsageError
from shared.parallel.comm import CommMeter
from shared.parallel.dist import spawn
from shared.parallel.topology import build_topology

from seqpar import parallel_rsa as rsa
from seqpar.models.bert import dense_attention
from seqpar.parallel_rsa import (WORK, layout_positions, padded_length, ring_self_attention,
                                 to_layout)
from seqpar.parallel_ulysses import ulysses_attention
from seqpar.reproduce import max_length

B, Z, A, REAL = 2, 4, 5, 13
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
METHODS = ("rsa", "lean", "ulysses")


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def attend(method, q, k, v, group, **kw):
    if method == "ulysses":
        return ulysses_attention(q, k, v, group, **kw)
    return ring_self_attention(q, k, v, group, lean=method == "lean", **kw)


def inputs(length, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, Z, length, A, generator=gen, dtype=torch.float64).to(dtype)
            for _ in range(4)]


def sharded_errors(group, method, layout, dtype, ref_fn, key_mask, doc_ids, causal, overlap=True):
    """Our output and gradients on this rank vs ``ref_fn`` (natural order, full sequence)."""
    n, r = group.size, group.rank
    length = key_mask.shape[1]
    q, k, v, d_out = inputs(length, dtype)
    d_out = d_out * key_mask[:, None, :, None]            # no gradient flows from padded rows
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = ref_fn(*full)
    (ref * d_out).sum().backward()
    pos = layout_positions(length, n, layout)
    c = length // n
    rows = slice(r * c, (r + 1) * c)
    lay = lambda t: to_layout(t, pos, dim=2)[:, :, rows]  # noqa: E731
    loc = [lay(t).clone().requires_grad_() for t in (q, k, v)]
    out = attend(method, *loc, group, key_mask=to_layout(key_mask, pos), causal=causal,
                 positions=pos, doc_ids=None if doc_ids is None else to_layout(doc_ids, pos),
                 **({} if method == "ulysses" else {"overlap": overlap}))
    (out * lay(d_out)).sum().backward()
    real = lay(key_mask[:, None, :, None].expand_as(ref))
    return {"out": rel(out[real], lay(ref)[real]),
            **{f"d{x}": rel(lo.grad, lay(f.grad)) for x, lo, f in zip("qkv", loc, full)}}


def padded_mask(length):
    mask = torch.ones(B, length, dtype=torch.bool)
    mask[:, REAL:] = False
    mask[1, REAL - 4:] = False                        # the second sample is shorter still
    return mask


def documents(length):
    """Packed documents (cu_seqlens style): sample 0 [5, 1, 7], sample 1 [9, 4]; pads after."""
    cu = [[0, 5, 6, 13], [0, 9, 13]]
    docs = torch.full((B, length), -1, dtype=torch.long)
    for b, bounds in enumerate(cu):
        for d, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            docs[b, s:e] = d
    return cu, docs


def per_document(cu, causal):
    """Reference: attention over each document alone, concatenated; pad rows zero."""
    def ref(q, k, v):
        out = torch.zeros_like(q)
        rows = []
        for b, bounds in enumerate(cu):
            parts = [dense_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e],
                                     causal=causal) for s, e in zip(bounds[:-1], bounds[1:])]
            rows.append(torch.cat(parts + [torch.zeros_like(q[b:b + 1, :, bounds[-1]:])], dim=2))
        return out + torch.cat(rows)
    return ref


def p2p_counts(group, method, overlap):
    """Calls of one batched exchange and of bare sends in a forward and a backward pass."""
    q, k, v = (torch.randn(B, Z, 4, A, requires_grad=True) for _ in range(3))
    length = 4 * group.size
    pos = layout_positions(length, group.size, "zigzag")
    with CommMeter() as fwd:
        out = ring_self_attention(q, k, v, group, lean=method == "lean", overlap=overlap,
                                  causal=True, positions=pos)
    with CommMeter() as bwd:
        out.sum().backward()
    pick = lambda m, op: sum(v["calls"] for (_, o), v in m.stats.items() if o == op)  # noqa
    return {"fwd": pick(fwd, "batch_p2p"), "bwd": pick(bwd, "batch_p2p"),
            "bare": pick(fwd, "send") + pick(bwd, "send")}


def bf16_errors(group):
    """RSA and the lean mode on the same bf16 inputs, against float64 attention of them."""
    n, r = group.size, group.rank
    c = 16
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, Z, c * n, A, generator=gen).mul(3).bfloat16() for _ in range(3))
    ref = dense_attention(q.double(), k.double(), v.double(), causal=True)[:, :, r * c:(r + 1) * c]
    rows = slice(r * c, (r + 1) * c)
    return {m: rel(ring_self_attention(q[:, :, rows], k[:, :, rows], v[:, :, rows], group,
                                       lean=m == "lean", causal=True).double(), ref)
            for m in ("rsa", "lean")}


def work_balance(group):
    """Score entries each rank computes in one causal forward pass, per layout."""
    out = {}
    for layout in ("contiguous", "zigzag"):
        length = 8 * group.size
        pos = layout_positions(length, group.size, layout)
        q, k, v = (torch.randn(1, 1, 8, 4) for _ in range(3))
        for method in ("rsa", "lean"):
            WORK["score_entries"] = 0
            ring_self_attention(q, k, v, group, lean=method == "lean", causal=True,
                                positions=pos)
            out[(layout, method)] = WORK["score_entries"]
    return out


def run_all(env):
    rsa.LEAN_TILE = 3             # lean mode: tiles smaller than a run, so both cut the blocks
    torch.manual_seed(0)
    group = build_topology("seq")["seq"]
    n = group.size
    length = padded_length(REAL, n, "zigzag")
    assert length == 16
    mask = padded_mask(length)
    cu, docs = documents(length)
    res = {"causal": {}, "docs": {}, "p2p": {}}
    for method in METHODS:
        for layout in ("contiguous", "zigzag"):
            for dtype in (torch.float64, torch.float32):
                ref = lambda q, k, v: dense_attention(q, k, v, mask, causal=True)  # noqa: E731
                res["causal"][(method, layout, dtype)] = sharded_errors(
                    group, method, layout, dtype, ref, mask, None, True)
            for causal in (True, False):
                res["docs"][(method, layout, causal)] = sharded_errors(
                    group, method, layout, torch.float64, per_document(cu, causal),
                    docs >= 0, docs, causal)
    res["causal"][("rsa", "zigzag-no-overlap", torch.float64)] = sharded_errors(
        group, "rsa", "zigzag", torch.float64,
        lambda q, k, v: dense_attention(q, k, v, mask, causal=True), mask, None, True, False)
    res["causal"][("lean", "zigzag-no-overlap", torch.float64)] = sharded_errors(
        group, "lean", "zigzag", torch.float64,
        lambda q, k, v: dense_attention(q, k, v, mask, causal=True), mask, None, True, False)
    for method in ("rsa", "lean"):
        for overlap in (True, False):
            res["p2p"][(method, overlap)] = p2p_counts(group, method, overlap)
    res["bf16"] = bf16_errors(group)
    res["work"] = work_balance(group)
    try:
        ulysses_attention(*(torch.zeros(1, 3, 2, 2) for _ in range(3)), group)
        res["heads_error"] = None
    except UsageError as exc:
        res["heads_error"] = str(exc)
    return res


@pytest.fixture(scope="module")
def results():
    return {2: spawn(run_all, 2), 4: spawn(run_all, 4)}


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("method", METHODS)
def test_causal_matches_serial(results, world, method):
    for r in results[world]:
        for (m, layout, dtype), errors in r["causal"].items():
            if m == method:
                assert max(errors.values()) < TOL[dtype], (layout, dtype, errors)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("method", METHODS)
def test_packed_documents_match_per_document(results, world, method):
    for r in results[world]:
        for (m, layout, causal), errors in r["docs"].items():
            if m == method:
                assert max(errors.values()) < TOL[torch.float64], (layout, causal, errors)


@pytest.mark.parametrize("world", [2, 4])
def test_one_batched_p2p_call_per_ring_step(results, world):
    """RSA: N−1 steps per ring pass, two passes forward (K, V) and two backward; lean: one pass
    forward (K and V together), backward N−1 block steps + the accumulators' N hops, riding
    along (N+1 calls overlapped, N without overlap). No bare isend/irecv anywhere."""
    n = world
    for r in results[world]:
        p = r["p2p"]
        for overlap in (True, False):
            assert p[("rsa", overlap)] == {"fwd": 2 * (n - 1), "bwd": 2 * (n - 1), "bare": 0}
        assert p[("lean", True)] == {"fwd": n - 1, "bwd": n + 1, "bare": 0}
        assert p[("lean", False)] == {"fwd": n - 1, "bwd": n, "bare": 0}


@pytest.mark.parametrize("world", [2, 4])
def test_lean_bf16_error_at_most_rsa(results, world):
    for r in results[world]:
        assert r["bf16"]["lean"] <= r["bf16"]["rsa"], r["bf16"]


def test_zigzag_balances_causal_work(results):
    """max/mean of the score entries per rank: zigzag equal (1.0) where contiguous is not."""
    for world in (2, 4):
        for method in ("rsa", "lean"):
            per_rank = {lay: [r["work"][(lay, method)] for r in results[world]]
                        for lay in ("contiguous", "zigzag")}
            ratio = {lay: max(w) / (sum(w) / len(w)) for lay, w in per_rank.items()}
            assert ratio["zigzag"] <= 1.05, (world, method, per_rank)
            assert ratio["contiguous"] >= (1.3 if world == 4 else 1.15), (world, method, per_rank)


def test_ulysses_heads_error(results):
    for world in (2, 4):
        msg = results[world][0]["heads_error"]
        assert msg and "3 heads" in msg and f"{world} ranks" in msg, msg


def test_zigzag_layout_and_split_errors():
    pos = layout_positions(8, 2, "zigzag")
    assert pos.tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert padded_length(13, 2, "zigzag") == 16 and padded_length(13, 2) == 14
    with pytest.raises(UsageError, match="zigzag layout over 2 ranks.*pad or cut it to 12 or 16"):
        layout_positions(14, 2, "zigzag")


def test_max_length_equals_brute_force():
    """The stable root, corrected to an integer, equals a search over every length (vectorised:
    the fit evaluated as ``(a·x + b)·x + c`` in float64, as ``max_length`` does)."""
    rng = random.Random(0)
    cases = [((1e-3, 5e4, 1e6), 2.0e8), ((0.0, 3.0, 10.0), 1000.0), ((2.0, 0.0, 0.0), 50.0),
             ((1.0, 1.0, 100.0), 50.0), ((1e-9, 1e7, 0.0), 2.0e10), ((-1e-9, 1e3, 0.0), 1e6)]
    for _ in range(150):
        a = rng.choice([0.0, 10 ** rng.uniform(-9, 2)])
        b = 10 ** rng.uniform(-1, 7)
        c = rng.uniform(0, 1e6)
        cases.append(((a, b, c), c + rng.uniform(0, 1e9)))
    for coef, limit in cases:
        got = max_length(coef, limit)
        a, b, c = max(0.0, coef[0]), coef[1], coef[2]
        if got > 1_000_000:          # too many to enumerate: the boundary must hold exactly
            assert (a * got + b) * got + c <= limit < (a * (got + 1) + b) * (got + 1) + c
            continue
        hi = 2 * got + 8
        x = np.arange(hi + 1, dtype=np.float64)
        fits = np.nonzero((a * x + b) * x + c <= limit)[0]
        brute = int(fits.max()) if len(fits) else 0
        assert brute < hi, (coef, limit)                   # the search went past the answer
        assert got == brute, (coef, limit, got, brute)
