"""The plain-PyTorch sparse convolutions equal dense conv3d / conv_transpose3d on the occupied
sites of small grids, in values and in every gradient (input features, weights, bias).

Tolerances: float64 throughout, so the sums of the sparse path (per-offset products, scatter-add)
and of dense conv3d (another summation order) agree to ~1e-12; 1e-9 leaves room."""
import pytest
import torch
import torch.nn.functional as F

from canonical_voting.models.minkunet import create_backbone
from canonical_voting.models.sparse import (SparseBatchNorm, SparseConv3d, SparseGridError,
                                            SparseTensor, kernel_offsets, pack, unpack)

TOL = dict(atol=1e-9, rtol=1e-9)


def _random_sites(shape, batch, occupancy, gen):
    """Distinct occupied sites of a (batch, *shape) grid, in random order."""
    total = batch * shape[0] * shape[1] * shape[2]
    n = max(2, int(total * occupancy))
    flat = torch.randperm(total, generator=gen)[:n]
    b, rest = flat // (shape[0] * shape[1] * shape[2]), flat % (shape[0] * shape[1] * shape[2])
    x, rest = rest // (shape[1] * shape[2]), rest % (shape[1] * shape[2])
    y, z = rest // shape[2], rest % shape[2]
    return torch.stack([b, x, y, z], 1)


def _dense_weight(conv: SparseConv3d, k: int) -> torch.Tensor:
    """Our (K, C_in, C_out) weight as dense conv3d's (C_out, C_in, k, k, k)."""
    return conv.weight.reshape(k, k, k, conv.in_channels, conv.out_channels).permute(4, 3, 0, 1, 2)


def test_keys_round_trip_and_offsets():
    c = torch.tensor([[0, -5, 7, 32000], [3, 0, 0, 0], [16383, -32000, 5, -1]])
    assert torch.equal(unpack(pack(c)), c)
    assert kernel_offsets(3).shape == (27, 3) and kernel_offsets(2).tolist()[1] == [0, 0, 1]
    with pytest.raises(SparseGridError, match="raise --voxel_size"):
        SparseTensor(torch.zeros(1, 1), torch.tensor([[0, 40000, 0, 0]]))


@pytest.mark.parametrize("kernel,occupancy", [(3, 0.15), (5, 0.3), (3, 0.9), (1, 0.2)])
def test_submanifold_equals_dense_conv3d_values_and_gradients(kernel, occupancy):
    gen = torch.Generator().manual_seed(kernel * 10 + int(occupancy * 10))
    shape, batch = (5, 7, 6), 2
    coords = _random_sites(shape, batch, occupancy, gen)
    feats = torch.randn(len(coords), 3, dtype=torch.float64, generator=gen, requires_grad=True)
    conv = SparseConv3d(3, 4, kernel, bias=True).double()
    with torch.no_grad():
        conv.bias.normal_(generator=gen)
    out = conv(SparseTensor(feats, coords))
    g_out = torch.randn(out.feats.shape, dtype=torch.float64, generator=gen)
    (out.feats * g_out).sum().backward()

    dense_in = SparseTensor(feats.detach(), coords).dense(shape, batch).requires_grad_()
    w = _dense_weight(conv, kernel).detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    dense = F.conv3d(dense_in, w, b, padding=kernel // 2)
    i = (coords[:, 0], slice(None), coords[:, 1], coords[:, 2], coords[:, 3])
    torch.testing.assert_close(out.feats, dense[i], **TOL)
    (dense[i] * g_out).sum().backward()
    torch.testing.assert_close(feats.grad, dense_in.grad[i], **TOL)
    torch.testing.assert_close(conv.weight.grad,
                               w.grad.permute(2, 3, 4, 1, 0).reshape(conv.weight.shape), **TOL)
    torch.testing.assert_close(conv.bias.grad, b.grad, **TOL)


def test_strided_transposed_and_coarse_submanifold_equal_dense():
    """down (k2 s2) -> submanifold k3 at stride 2 -> transposed (k2 s2) back to the stored sites,
    each against its dense counterpart, with gradients through the whole chain."""
    gen = torch.Generator().manual_seed(3)
    shape, batch = (6, 8, 4), 2
    coords = _random_sites(shape, batch, 0.25, gen)
    feats = torch.randn(len(coords), 3, dtype=torch.float64, generator=gen, requires_grad=True)
    down = SparseConv3d(3, 5, 2, stride=2).double()
    mid = SparseConv3d(5, 4, 3).double()
    up = SparseConv3d(4, 2, 2, stride=2, transposed=True).double()
    x = SparseTensor(feats, coords)
    d = down(x)
    m = mid(d)
    u = up(m)
    assert d.stride == 2 and m.stride == 2 and u.stride == 1
    assert torch.equal(u.coords, coords)                      # back on the stored sites
    g = torch.randn(u.feats.shape, dtype=torch.float64, generator=gen)
    (u.feats * g).sum().backward()

    dense_in = x.dense(shape, batch).detach().requires_grad_()
    wd = _dense_weight(down, 2).detach().clone().requires_grad_()
    wm = _dense_weight(mid, 3).detach().clone().requires_grad_()
    # conv_transpose3d weight: (C_in, C_out, 2, 2, 2) = ours (K, C_in, C_out) rearranged
    wu = up.weight.reshape(2, 2, 2, 4, 2).permute(3, 4, 0, 1, 2).detach().clone().requires_grad_()
    dd = F.conv3d(dense_in, wd, stride=2)
    occupied = (dense_in.detach().abs().sum(1, keepdim=True) > 0).double()
    coarse_occ = F.max_pool3d(occupied, 2)                    # the coarse sites that exist
    dm = F.conv3d(dd * coarse_occ, wm, padding=1) * coarse_occ
    du = F.conv_transpose3d(dm, wu, stride=2)
    dc = d.coords.clone()
    dc[:, 1:] //= 2
    torch.testing.assert_close(d.feats, dd[dc[:, 0], :, dc[:, 1], dc[:, 2], dc[:, 3]], **TOL)
    torch.testing.assert_close(m.feats, dm[dc[:, 0], :, dc[:, 1], dc[:, 2], dc[:, 3]], **TOL)
    i = (coords[:, 0], slice(None), coords[:, 1], coords[:, 2], coords[:, 3])
    torch.testing.assert_close(u.feats, du[i], **TOL)
    (du[i] * g).sum().backward()
    torch.testing.assert_close(feats.grad, dense_in.grad[i], **TOL)
    torch.testing.assert_close(down.weight.grad, wd.grad.permute(2, 3, 4, 1, 0).reshape(8, 3, 5),
                               **TOL)
    torch.testing.assert_close(mid.weight.grad, wm.grad.permute(2, 3, 4, 1, 0).reshape(27, 5, 4),
                               **TOL)
    torch.testing.assert_close(up.weight.grad, wu.grad.permute(2, 3, 4, 0, 1).reshape(8, 4, 2),
                               **TOL)


def test_empty_input_and_batchnorm_and_unet_shapes():
    conv = SparseConv3d(3, 4, 3)
    empty = conv(SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.long)))
    assert empty.feats.shape == (0, 4)
    gen = torch.Generator().manual_seed(0)
    coords = _random_sites((9, 10, 11), 2, 0.1, gen)
    x = SparseTensor(torch.randn(len(coords), 3, generator=gen), coords)
    bn = SparseBatchNorm(3)
    y = bn(x)
    torch.testing.assert_close(y.feats.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    net = create_backbone("minkunet_small", in_channels=3, out_channels=7)
    out = net(x)
    assert out.feats.shape == (len(coords), 7) and torch.equal(out.coords, coords)


@pytest.mark.gpu
def test_cuda_equals_cpu_and_minkunet34c_trains_under_bf16():
    gen = torch.Generator().manual_seed(5)
    coords = _random_sites((12, 10, 14), 2, 0.2, gen)
    feats = torch.randn(len(coords), 3, generator=gen)
    conv = SparseConv3d(3, 8, 3)
    cpu = conv(SparseTensor(feats, coords)).feats
    gpu = conv.cuda()(SparseTensor(feats.cuda(), coords.cuda())).feats
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
    net = create_backbone("minkunet34c", 3, 64).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(SparseTensor(feats.cuda(), coords.cuda()))
    out.feats.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
