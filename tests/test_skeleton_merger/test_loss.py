"""The vectorised Composite Chamfer Distance against the slow per-point loop (values and every
gradient), the masking budget, the offset regulariser, and the loss under bf16 autocast."""
import pytest
import torch

from skeleton_merger.loss import (composite_chamfer, masking_weights, nearest_pairs,
                                  offset_regularizer, reference_composite_chamfer)


def _padded(leaves, counts):
    """Sub-clouds (B, c_e, 3) -> padded (B, P, C, 3), rows past c_e repeating row c_e - 1 (as
    the decoder pads), differentiable in the leaves."""
    C = int(counts.max())
    rows = [y[:, torch.clamp(torch.arange(C), max=int(c) - 1)] for y, c in zip(leaves, counts)]
    return torch.stack(rows, 1)


def _problem(seed, B, N, counts, dtype=torch.float64, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    cloud = (torch.rand(B, N, 3, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    leaves = [(spread * (torch.rand(B, c, 3, generator=g, dtype=dtype) * 2 - 1)).requires_grad_()
              for c in counts.tolist()]
    strengths = torch.rand(B, len(counts), generator=g, dtype=dtype)
    strengths[0, :2] = 0.95                        # budgets that run out after one or two edges
    return cloud, leaves, strengths.requires_grad_()


@pytest.mark.parametrize("seed,B,N,counts,chunk", [
    (0, 2, 13, [3, 5, 1, 4, 7, 2], None),
    (1, 3, 9, [2, 6, 3], 40),                     # several chunks of input points
    (2, 1, 17, [15, 4, 9, 1, 6, 3, 8, 2, 5, 7], 7),
])
def test_ccd_equals_the_per_point_reference(seed, B, N, counts, chunk):
    counts = torch.tensor(counts)
    cloud, leaves, a = _problem(seed, B, N, counts)
    fast = composite_chamfer(cloud, _padded(leaves, counts), counts, a, chunk_elements=chunk)
    slow = reference_composite_chamfer(cloud, leaves, a)
    # float64 throughout: both sum the same terms in different orders (~1e-16 relative)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad(fast, [cloud, a, *leaves])
    g_slow = torch.autograd.grad(slow, [cloud, a, *leaves])
    for name, x, y in zip(["cloud", "strengths"] + [f"edge {e}" for e in range(len(leaves))],
                          g_fast, g_slow):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)
    assert g_fast[1].abs().sum() > 0 and all(g.abs().sum() > 0 for g in g_fast[2:])


def test_the_unexplained_mass_penalty_is_what_keeps_strengths_up():
    """All strengths at 0: every point is unexplained and the loss is the penalty (20) plus
    nothing; the gradient pushes every strength up."""
    counts = torch.tensor([4, 5])
    cloud, leaves, _ = _problem(3, 2, 11, counts)
    a = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    loss, terms = composite_chamfer(cloud, _padded(leaves, counts), counts, a, return_terms=True)
    assert terms["penalty"] == pytest.approx(20.0) and terms["backward"] == 0
    (grad,) = torch.autograd.grad(loss, [a])
    assert (grad < 0).all()


def test_the_masking_budget_never_exceeds_one_per_point():
    g = torch.Generator().manual_seed(4)
    a = torch.rand(5, 7, 45, generator=g) ** 0.3          # many strengths near 1
    a[0, 0] = 1.0
    a[1, 0] = 0.0
    w, spent = masking_weights(a)
    assert (w >= 0).all() and (w <= a + 1e-7).all()
    assert (w.sum(-1) <= 1 + 1e-6).all() and (spent <= 1).all()
    torch.testing.assert_close(w.sum(-1), spent)
    # the greedy loop of the paper, one edge at a time
    budget = torch.ones(5, 7)
    for m in range(45):
        step = torch.minimum(budget, a[..., m])
        torch.testing.assert_close(w[..., m], step, atol=1e-6, rtol=0)
        budget = budget - step
    assert w[0, 0, 0] == 1 and (w[0, 0, 1:] == 0).all()    # a full first edge takes everything
    assert torch.equal(w[1, 0, 0], torch.tensor(0.0))      # an inactive edge takes nothing


def test_nearest_pairs_are_the_true_nearest_neighbours():
    g = torch.Generator().manual_seed(5)
    cloud = torch.rand(2, 31, 3, generator=g, dtype=torch.float64)
    samples = torch.rand(2, 4, 6, 3, generator=g, dtype=torch.float64)
    to_edge, to_cloud = nearest_pairs(cloud, samples, chunk_elements=50)
    d = ((cloud[:, :, None, None] - samples[:, None]) ** 2).sum(-1)       # (B, N, P, C)
    assert torch.equal(to_edge, d.argmin(-1))
    assert torch.equal(to_cloud, d.argmin(1))


def test_offset_regularizer_sums_every_row():
    offsets = torch.full((45, 200, 3), 0.1, requires_grad=True)
    reg = offset_regularizer(offsets)
    assert reg.item() == pytest.approx(0.01 * 45 * 200 * 3 * 0.01)
    reg.backward()
    torch.testing.assert_close(offsets.grad, torch.full_like(offsets, 0.01 * 2 * 0.1))


def test_ccd_under_bf16_autocast_is_float32():
    counts = torch.tensor([5, 3, 6])
    cloud, leaves, a = _problem(6, 2, 20, counts, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = composite_chamfer(cloud, _padded(leaves, counts).bfloat16(), counts, a)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(y.grad).all() for y in leaves)
