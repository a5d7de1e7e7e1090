"""The network: keypoints are convex combinations of the input points, the skeleton decoder's
sampling rule, edge order and padding, the encoder's shapes, and bf16 autocast forward and
backward on CPU."""
import pytest
import torch

from skeleton_merger.models import SkeletonDecoder, SkeletonMerger, edge_list

SMALL = dict(npoints=(48, 16, 8, 4), width=0.25)


def _model(k=5, seed=0, **kw):
    torch.manual_seed(seed)
    return SkeletonMerger(k, **{**SMALL, **kw})


def _cloud(B=3, N=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, 3, generator=g) * 2 - 1


def test_keypoints_are_convex_combinations_of_the_input_points():
    model = _model()
    x = _cloud()
    out = model(x)
    H = out.heatmaps
    assert H.shape == (3, 5, 97) and (H >= 0).all()
    torch.testing.assert_close(H.sum(-1), torch.ones(3, 5))          # softmax over the points
    torch.testing.assert_close(out.keypoints, H @ x)
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    assert ((out.keypoints >= lo - 1e-6) & (out.keypoints <= hi + 1e-6)).all()
    assert out.strengths.shape == (3, 10) and ((out.strengths > 0) & (out.strengths < 1)).all()
    assert out.log_probs.shape == (3, 97, 5)
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(3, 97))


def test_edges_are_ordered_i_outer_j_below():
    assert edge_list(4).tolist() == [[1, 0], [2, 0], [2, 1], [3, 0], [3, 1], [3, 2]]
    assert len(edge_list(10)) == 45


def test_decoder_samples_each_edge_from_its_batch_mean_length():
    dec = SkeletonDecoder(3)
    with torch.no_grad():
        dec.offsets.zero_()
    # edge (1,0) lengths 0.5 and 0.7 -> mean ~0.6 -> 60 samples (sqrt(1e-3 + l^2) ~ l)
    kp = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0], [0.0, 3.0, 0]],
                       [[0.0, 0, 0], [0.7, 0, 0], [0.0, 0.05, 0]]])
    samples, counts = dec(kp)
    lengths = torch.sqrt(1e-3 + torch.tensor([[0.25, 9.0, 9.25], [0.49, 0.0025, 0.4925]]))
    expected = torch.floor(lengths.mean(0) / 0.01).clamp(15, 200).long()
    assert torch.equal(counts, expected) and counts[1] == 152
    assert samples.shape == (2, 3, int(counts.max()), 3)
    c = int(counts[0])
    t = torch.linspace(0, 1, c)
    # t multiplies K_i (the first keypoint of the edge (i, j) = (1, 0)), 1 - t multiplies K_j
    expected = t[:, None] * kp[0, 1] + (1 - t[:, None]) * kp[0, 0]
    torch.testing.assert_close(samples[0, 0, :c], expected)
    # rows past the edge's count repeat its last sample
    assert (samples[:, 0, c:] == samples[:, 0, c - 1:c]).all()
    short = dec(kp[1:2].repeat(2, 1, 1))[1]
    assert short[0] == 70 and short[1] == 15          # clamped below at 15


def test_decoder_adds_its_own_offset_rows():
    dec = SkeletonDecoder(2, max_samples=40)
    kp = torch.zeros(2, 2, 3)
    samples, counts = dec(kp, counts=torch.tensor([20]))
    torch.testing.assert_close(samples[0, 0], dec.offsets[0, :20].detach())
    samples.sum().backward()
    assert (dec.offsets.grad[0, :20] == 2).all() and (dec.offsets.grad[0, 20:] == 0).all()


def test_encoder_levels_and_one_error_for_too_few_points():
    model = _model()
    assert [sa.npoint for sa in model.encoder.sa] == [48, 16, 8, 4]
    assert model.min_points == 48
    assert model.encoder.global_channels == 256                      # 128 + 128 at width 0.25


def test_bf16_autocast_forward_and_backward_on_cpu():
    from skeleton_merger.loss import composite_chamfer, offset_regularizer
    model = _model()
    x = _cloud(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = composite_chamfer(x, out.samples, out.counts, out.strengths) + \
            offset_regularizer(out.offsets)
    assert out.keypoints.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    # the same weights in float32 give nearby keypoints
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(3)
        ref = model(x).keypoints
    with torch.random.fork_rng(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        low = model(x).keypoints
    assert (low - ref).abs().max() < 0.05


def test_counts_given_to_the_model_override_the_rule():
    model = _model(k=3)
    out = model(_cloud(B=2), counts=torch.tensor([17, 30, 22]))
    assert out.counts.tolist() == [17, 30, 22] and out.samples.shape[2] == 30
    assert [c.shape[1] for c in out.sub_clouds()] == [17, 30, 22]


@pytest.mark.parametrize("k", [1, 0])
def test_fewer_than_two_keypoints_is_refused(k):
    with pytest.raises(ValueError, match="at least 2 keypoints"):
        SkeletonMerger(k, **SMALL)
