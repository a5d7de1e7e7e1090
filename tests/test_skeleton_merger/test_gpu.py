"""On a GPU (skipped without CUDA): the paper-size model (N = 2048, full encoder) trains a few
steps under bf16 autocast, and the CCD on CUDA equals the CCD on the CPU."""
import pytest
import torch

from skeleton_merger.config import Config
from skeleton_merger.loss import composite_chamfer, offset_regularizer
from skeleton_merger.train import build_model, build_optimizer


@pytest.mark.gpu
def test_paper_size_model_trains_on_cuda_with_bf16():
    torch.manual_seed(0)
    cfg = Config()                                         # the paper's sizes
    model = build_model(cfg).cuda()
    opt = build_optimizer(model, cfg)
    x = (torch.rand(8, 2048, 3, device="cuda") * 2 - 1)
    losses = []
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            loss = composite_chamfer(x, out.samples, out.counts, out.strengths) + \
                offset_regularizer(out.offsets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    torch.testing.assert_close(out.heatmaps.sum(-1), torch.ones(8, 10, device="cuda"))
    # the CCD itself: CUDA and CPU agree (fp32 sums in different orders)
    samples, strengths = out.samples.detach().float(), out.strengths.detach().float()
    gpu = composite_chamfer(x, samples, out.counts, strengths)
    cpu = composite_chamfer(x.cpu(), samples.cpu(), out.counts.cpu(), strengths.cpu())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
