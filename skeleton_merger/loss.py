"""The Skeleton Merger losses: Composite Chamfer Distance (CCD) with activation masking, and the
offset regulariser (../shared/papers/skeleton_merger.md Sec. 2).

Distances are non-squared with a stabiliser, ``d(x, y) = sqrt(1e-4 + |x - y|^2)``. For an input
cloud ``X`` (N points), sub-clouds ``Y_e`` and strengths ``a_e`` of the P edges:

* forward (skeleton -> input), weighted by the strengths and averaged over edges:
  ``L_f = (1/P) sum_e mean_b[a_be mean_{y in Y_e} min_x d(x, y)]``;
* backward (input -> skeleton) with activation masking: each input point ``x`` sorts the edges by
  ``D_e(x) = min_{y in Y_e} d(x, y)`` and spends a unit budget on them in that order,
  ``w_(m) = min(1 - sum_{l<m} w_(l), a_(m))``; ``L_b = mean_{b,x} sum_m w_(m) D_(m)(x)``;
* the unexplained mass ``L_p = 20 mean_{b,x}(1 - sum_m w_(m)(x))``;

``CCD = L_f + L_b + L_p``; the regulariser is ``0.01 sum O^2`` over every offset table (all 200
rows of every edge). Total loss = CCD + regulariser.

Vectorised: one pass over chunks of input points finds, without autograd, each point's nearest
sample of every edge and each sample's nearest input point (squared distances by matrix product);
the distances of those pairs are then recomputed exactly with autograd, so the values and the
gradients are those of the min over all pairs (torch's ``min`` also sends the gradient to the
argmin). The greedy budget is closed form: after m edges the spent mass is
``min(1, a_(1) + ... + a_(m))``, so ``w = diff(clamp(cumsum(a_sorted), max=1))``.
:func:`reference_composite_chamfer` is the slow per-point loop the tests compare against.
"""
from __future__ import annotations

import torch

EPS = 1e-4
"""the stabiliser inside the square root of every distance"""
PENALTY = 20.0
"""weight of the unexplained mass"""
OFFSET_WEIGHT = 0.01
CHUNK_ELEMENTS = 2 ** 21
"""elements of one (B, n, P * C) block of squared distances (8 MiB in float32: reduced twice
while it is still in cache, 1.6x faster than 32 MiB blocks on the development machine)"""


def masking_weights(sorted_strengths: torch.Tensor):
    """The unit budget spent greedily along the last axis (edges sorted nearest first).

    ``sorted_strengths (..., P)`` -> ``(weights (..., P), spent (...))``, with
    ``weights_m = min(1 - sum_{l<m} weights_l, a_m)`` (each in [0, a_m], summing to at most 1)."""
    spent = torch.cumsum(sorted_strengths, dim=-1).clamp(max=1.0)
    before = torch.nn.functional.pad(spent[..., :-1], (1, 0))
    return spent - before, spent[..., -1]


@torch.no_grad()
def nearest_pairs(cloud: torch.Tensor, samples: torch.Tensor, chunk_elements: int | None = None):
    """Nearest neighbours between an input cloud and padded edge samples, without autograd.

    ``cloud (B, N, 3)``, ``samples (B, P, C, 3)`` -> ``(to_edge (B, N, P), to_cloud (B, P, C))``:
    the index (in ``0..C-1``) of the sample of edge ``e`` nearest to each point, and the index
    (in ``0..N-1``) of the point nearest to each sample. Squared distances
    ``|x|^2 + |y|^2 - 2 x.y`` come from one matrix product of augmented coordinates
    ``[-2x, |x|^2, 1] . [y, 1, |y|^2]``, in blocks of input points small enough to stay in cache
    while they are reduced both ways."""
    B, N, _ = cloud.shape
    _, P, C, _ = samples.shape
    y = samples.reshape(B, P * C, 3)
    one = lambda t: torch.ones_like(t[..., :1])                                   # noqa: E731
    xa = torch.cat([-2 * cloud, cloud.square().sum(-1, keepdim=True), one(cloud)], -1)
    ya = torch.cat([y, one(y), y.square().sum(-1, keepdim=True)], -1).transpose(1, 2)
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(1, B * P * C))
    to_edge = torch.empty(B, N, P, dtype=torch.long, device=cloud.device)
    best = torch.full((B, P * C), float("inf"), dtype=cloud.dtype, device=cloud.device)
    to_cloud = torch.zeros(B, P * C, dtype=torch.long, device=cloud.device)
    for start in range(0, N, rows):
        d2 = torch.bmm(xa[:, start:start + rows], ya)                            # (B, n, PC)
        to_edge[:, start:start + rows] = d2.view(B, -1, P, C).argmin(-1)
        low, arg = d2.min(dim=1)                                                  # (B, PC)
        better = low < best
        best = torch.where(better, low, best)
        to_cloud = torch.where(better, arg + start, to_cloud)
    return to_edge, to_cloud.view(B, P, C)


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(EPS + (a - b).square().sum(-1))


def composite_chamfer(cloud: torch.Tensor, samples: torch.Tensor, counts: torch.Tensor,
                      strengths: torch.Tensor, penalty: float = PENALTY,
                      chunk_elements: int | None = None, return_terms: bool = False):
    """Composite Chamfer Distance with activation masking (module docstring), vectorised.

    Args:
        cloud: ``(B, N, 3)`` input points.
        samples: ``(B, P, C, 3)`` edge samples padded to ``C`` rows, row ``s >= counts[e]``
            repeating a real sample of edge ``e`` (as
            :class:`~skeleton_merger.models.SkeletonDecoder` pads them); only the first
            ``counts[e]`` rows enter the forward term.
        counts: ``(P,)`` samples per edge.
        strengths: ``(B, P)`` activation strengths in [0, 1].
    Returns the scalar loss, or ``(loss, {"forward", "backward", "penalty"})``. Computed in
    float32 (or the inputs' float64) also under autocast.
    """
    with torch.autocast(cloud.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(cloud.dtype, samples.dtype), torch.float32)
        cloud, samples, strengths = cloud.to(dtype), samples.to(dtype), strengths.to(dtype)
        B, N, _ = cloud.shape
        _, P, C, _ = samples.shape
        counts = counts.to(samples.device)
        to_edge, to_cloud = nearest_pairs(cloud.detach(), samples.detach(), chunk_elements)

        # backward term: D_e(x) for every point and edge, edges sorted nearest first
        near = samples.gather(2, to_edge.transpose(1, 2)[..., None].expand(-1, -1, -1, 3))
        dist = _distance(cloud[:, :, None, :], near.transpose(1, 2))                  # (B, N, P)
        dist_sorted, order = dist.sort(dim=-1)
        weights, spent = masking_weights(strengths[:, None, :].expand(-1, N, -1).gather(-1, order))
        backward = (weights * dist_sorted).sum(-1).mean()
        unexplained = penalty * (1.0 - spent).mean()

        # forward term: each real sample to its nearest input point, weighted by its edge
        idx = to_cloud.reshape(B, P * C, 1).expand(-1, -1, 3)
        nearest_point = cloud.gather(1, idx).view(B, P, C, 3)
        d = _distance(samples, nearest_point)                                          # (B, P, C)
        valid = torch.arange(C, device=samples.device)[None, :] < counts[:, None]      # (P, C)
        per_edge = (d * valid).sum(-1) / counts.to(dtype)                              # (B, P)
        forward = (strengths * per_edge).mean()
        loss = forward + backward + unexplained
    if return_terms:
        return loss, {"forward": forward.detach(), "backward": backward.detach(),
                      "penalty": unexplained.detach()}
    return loss


def offset_regularizer(offsets: torch.Tensor, weight: float = OFFSET_WEIGHT) -> torch.Tensor:
    """``weight * sum(offsets^2)`` over every row of every edge's table (a sum, not a mean)."""
    return weight * offsets.float().square().sum()


def reference_composite_chamfer(cloud: torch.Tensor, sub_clouds: list[torch.Tensor],
                                strengths: torch.Tensor, penalty: float = PENALTY) -> torch.Tensor:
    """The slow per-point definition (for tests): Python loops over shapes, points and edges,
    ``min`` over explicit distance lists, and the budget spent one edge at a time."""
    B, N, _ = cloud.shape
    P = len(sub_clouds)
    forward = cloud.new_zeros(())
    for e, y in enumerate(sub_clouds):
        for b in range(B):
            nearest = [torch.stack([_distance(y[b, s], cloud[b, n]) for n in range(N)]).min()
                       for s in range(y.shape[1])]
            forward = forward + strengths[b, e] * torch.stack(nearest).mean() / (B * P)
    backward = cloud.new_zeros(())
    unexplained = cloud.new_zeros(())
    for b in range(B):
        for n in range(N):
            d = torch.stack([_distance(y[b], cloud[b, n]).min() for y in sub_clouds])   # (P,)
            ordered, order = torch.sort(d)
            budget = cloud.new_ones(())
            for m in range(P):
                w = torch.minimum(budget, strengths[b, order[m]])
                backward = backward + w * ordered[m] / (B * N)
                budget = budget - w
            unexplained = unexplained + penalty * budget / (B * N)
    return forward + backward + unexplained
