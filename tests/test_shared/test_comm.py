"""Every collective of shared.parallel.comm, forward and backward, against a single-process reference.

Each rank r draws its input x_r and the upstream gradient g_r from seeds that every rank knows,
so every rank can also evaluate the *serial reference* F(x_0, …, x_{g-1}) -> (y_0, …, y_{g-1})
and backpropagate ``Σ_j <y_j, g_j>`` through it with autograd. The distributed output y_r and the
gradient of x_r must equal the reference's. Shapes are odd multiples of the group size (uneven
across dims, never powers of two) so a transposed or misplaced chunk cannot pass. float64 on
gloo: sums differ from the reference only by summation order, hence the 1e-12 tolerance.

One spawn per world size (2, 4, 8) runs all ops on the whole world and on a strided subgroup
(2D ``col`` at 4 ranks, 3D ``output`` and ``input_x_weight`` at 8), which checks that group-local
ranks are mapped to global ranks correctly for broadcast, reduce and ring steps.
"""
import zlib

import pytest
import torch

import shared.parallel as shared
from shared.parallel import comm
from shared.parallel.topology import Group, single_group

TOL = dict(rtol=1e-12, atol=1e-12)


def _rand(shape, *seed):
    # crc32, not hash(): str hashes differ between processes (PYTHONHASHSEED), and every rank
    # must draw the same tensor
    g = torch.Generator().manual_seed(zlib.crc32(repr(seed).encode()))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _cases(gsize):
    """(name, input shape, distributed fn(x, group), serial reference(list of x) -> list of y).

    Names ending in ``[rep_in]`` take one logical input replicated on every rank (the reference
    gets the same tensor n times); ``[rep_out]`` produce one logical output used identically on
    every rank (the reference returns one tensor, every rank backpropagates the same gradient).
    """
    n = gsize
    chunk = lambda t, dim, r: t.chunk(n, dim)[r]  # noqa: E731
    return [
        ("copy_to_group[rep_in]", (3, 5), lambda x, g: comm.copy_to_group(x, g),
         lambda xs: list(xs)),
        ("reduce_from_group[rep_out]", (3, 5), lambda x, g: comm.reduce_from_group(x, g),
         lambda xs: [sum(xs)]),
        ("all_gather_dim1", (3, 5, 7), lambda x, g: comm.all_gather(x, 1, g),
         lambda xs: [torch.cat(xs, 1) for _ in xs]),
        ("all_gather_dim0", (3, 5), lambda x, g: comm.all_gather(x, 0, g),
         lambda xs: [torch.cat(xs, 0) for _ in xs]),
        ("reduce_scatter_dim1", (3, 5 * n, 7), lambda x, g: comm.reduce_scatter(x, 1, g),
         lambda xs: [chunk(sum(xs), 1, r) for r in range(n)]),
        ("reduce_scatter_dim2", (3, 5, 7 * n), lambda x, g: comm.reduce_scatter(x, 2, g),
         lambda xs: [chunk(sum(xs), 2, r) for r in range(n)]),
        ("split_to_group[rep_in]", (3, 5 * n), lambda x, g: comm.split_to_group(x, 1, g),
         lambda xs: [chunk(xs[r], 1, r) for r in range(n)]),
        ("gather_from_group[rep_out]", (3, 5, 7), lambda x, g: comm.gather_from_group(x, 2, g),
         lambda xs: [torch.cat(xs, 2)]),
        ("broadcast_src_last", (3, 5), lambda x, g: comm.broadcast(x, n - 1, g),
         lambda xs: [xs[n - 1] for _ in xs]),
        ("reduce_to_dst_1", (3, 5), lambda x, g: comm.reduce_to(x, 1 % n, g),
         lambda xs: [sum(xs) if r == 1 % n else torch.zeros_like(xs[0]) for r in range(n)]),
        ("all_to_all_0_1", (3 * n, 5), lambda x, g: comm.all_to_all(x, g, 0, 1),
         lambda xs: [torch.cat([chunk(xj, 0, r) for xj in xs], 1) for r in range(n)]),
        ("all_to_all_1_0", (3, 5 * n, 2), lambda x, g: comm.all_to_all(x, g, 1, 0),
         lambda xs: [torch.cat([chunk(xj, 1, r) for xj in xs], 0) for r in range(n)]),
        ("ring_shift_+1", (3, 5), lambda x, g: comm.ring_shift(x, g, 1),
         lambda xs: [xs[(r - 1) % n] for r in range(n)]),
        ("ring_shift_-2", (3, 5), lambda x, g: comm.ring_shift(x, g, -2),
         lambda xs: [xs[(r + 2) % n] for r in range(n)]),
    ]


def _check_group(group: Group, tag: str):
    n, r = group.size, group.rank
    for name, shape, fn, ref in _cases(n):
        if name.endswith("[rep_in]"):
            xs = [_rand(shape, tag, name, "x").requires_grad_()] * n
        else:
            xs = [_rand(shape, tag, name, "x", j).requires_grad_() for j in range(n)]
        ys_ref = ref(xs)
        gs = [_rand(y.shape, tag, name, "g", j) for j, y in enumerate(ys_ref)]
        sum((y * g).sum() for y, g in zip(ys_ref, gs)).backward()
        mine = 0 if name.endswith("[rep_out]") else r

        x = xs[r].detach().clone().requires_grad_()
        y = fn(x, group)
        assert y.shape == ys_ref[mine].shape, (name, tag, y.shape, ys_ref[mine].shape)
        torch.testing.assert_close(y, ys_ref[mine].detach(), **TOL, msg=f"{name} forward on {tag}")
        y.backward(gs[mine])
        ref_grad = xs[r].grad if xs[r].grad is not None else torch.zeros_like(xs[r])
        torch.testing.assert_close(x.grad, ref_grad, **TOL, msg=f"{name} backward on {tag}")


def _check_raw(group: Group):
    """Async raw collectives, the overlapped ring and the byte counters."""
    n, r = group.size, group.rank
    x = torch.full((3, 7), float(r + 1), dtype=torch.float64)
    pending = comm.raw_all_reduce(x, group, async_op=True)
    torch.testing.assert_close(pending.wait(), torch.full_like(x, n * (n + 1) / 2))
    assert torch.equal(x, torch.full_like(x, float(r + 1))), "raw collectives must not modify input"

    # overlapped ring: post the next transfer, compute on the current block, then wait
    ring, block, total = comm.RingExchange(group), x.clone(), torch.zeros_like(x)
    for step in range(n):
        if step + 1 < n:
            ring.start(block)
        total += block
        if step + 1 < n:
            block = ring.wait()
    torch.testing.assert_close(total, torch.full_like(x, n * (n + 1) / 2))

    comm.reset_comm_stats()
    with comm.CommMeter() as meter:
        comm.raw_all_reduce(x, group)
        comm.raw_all_gather(x, 0, group)
        comm.raw_broadcast(x, 0, group)
    m = x.numel() * x.element_size()
    expected = 2 * (n - 1) / n * m + (n - 1) / n * m * n + (n - 1) / n * m
    assert meter.stats[(group.name, "all_reduce")]["calls"] == 1
    assert abs(meter.sent_bytes - expected) < 1e-6, (meter.sent_bytes, expected)


def _worker(env, mode_groups):
    torch.manual_seed(0)
    world = shared.build_topology("1d")
    groups = [(world["tensor"], "world")]
    for mode, family, depth in mode_groups:
        topo = shared.build_topology(mode, depth=depth)
        groups.append((topo[family], f"{mode}.{family}"))
    for group, tag in groups:
        _check_group(group, tag)
        _check_raw(group)
    return [g.ranks for g, _ in groups]


@pytest.mark.parametrize("world_size,subgroups", [
    (2, []),
    (4, [("2d", "col", 1), ("2d", "row", 1)]),
    (8, [("3d", "output", 1), ("3d", "input_x_weight", 1), ("2p5d", "xz", 2)]),
])
def test_collectives_match_serial_reference(world_size, subgroups):
    out = shared.spawn(_worker, world_size, subgroups, timeout_s=240)
    assert len(out) == world_size
    # every rank saw the same world group, and subgroups partition the world
    for k in range(1 + len(subgroups)):
        members = {tuple(o[k]) for o in out}
        assert sorted(r for m in members for r in m) == list(range(world_size))


def test_group_of_one_is_a_noop_and_counts_nothing():
    g = single_group()
    x = torch.randn(3, 5, requires_grad=True)
    comm.reset_comm_stats()
    for y in (comm.copy_to_group(x, g), comm.reduce_from_group(x, g), comm.all_gather(x, 1, g),
              comm.reduce_scatter(x, 1, g), comm.split_to_group(x, 1, g),
              comm.gather_from_group(x, 1, g), comm.broadcast(x, 0, g), comm.reduce_to(x, 0, g),
              comm.all_to_all(x, g, 0, 1), comm.ring_shift(x, g)):
        assert y is x
    assert comm.comm_stats() == {}


def test_indivisible_split_names_the_sizes():
    g = Group("test.fake", (0, 1, 2), 0, pg=None)
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        comm.raw_split(torch.zeros(4, 5), 1, g)
