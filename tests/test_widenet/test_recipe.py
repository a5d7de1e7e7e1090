"""Mixed precision and the official recipe through timm: bf16 autocast forward and backward of
every registry model, fp32 routing under autocast, LAMB's trust ratio at weight decay 0, the
composed augmentation in the brief's order, per-sample mixup, and unreadable JPEGs named or
skipped."""
import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.train import read_metrics
from widenet.config import PRESETS, Config
from widenet.data import DataError, build_datasets, train_transform
from widenet.models import MoE, create_model, list_models
from widenet.train import build_mixup, build_optimizer

from .test_data import write_imagenet


def _small(name):
    """The registry entry as registered (tiny ones) or, for the paper-size ones, with their
    structure (pooling, pre-logits head, MoE placement, sharing, experts) at 32 px, width 64 and
    2 blocks, so that every entry runs on a CPU in a test."""
    kw = dict(dropout=0.0)
    if not name.endswith("_tiny"):
        kw.update(img_size=32, patch_size=16, depth=2, dim=64, heads=4, mlp_dim=128, moe_dim=128)
        if name.startswith("vit_moe"):
            kw["num_moe_layers"] = 1                 # the last block of two is an MoE
    return create_model(name, **kw)


VISION = [n for n in list_models() if not n.startswith(("albert", "widenet_nlp"))]


@pytest.mark.parametrize("name", VISION)
def test_bf16_autocast_forward_and_backward_of_every_model(name):
    """bf16 autocast (CPU) against fp32 from the same weights and images: logits within bf16
    precision (8 mantissa bits, a few roundings deep: atol 0.05 + rtol 0.05 of O(1) logits),
    every parameter gets a finite gradient, and the gradients point the same way (cosine > 0.9
    over all parameters). The NLP entries: tests/test_widenet/test_nlp.py."""
    torch.manual_seed(0)
    model = _small(name).eval()                      # eval: no router noise, same routing
    x = torch.randn(4, 3, 32, 32)

    def run(amp):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            loss = out.logits.float().logsumexp(-1).mean() + 0.01 * out.aux_loss
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        return out.logits.float().detach(), grads

    ref, g_ref = run(False)
    low, g_low = run(True)
    torch.testing.assert_close(low, ref, atol=0.05, rtol=0.05)
    assert torch.isfinite(g_low).all() and g_low.abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(g_low, g_ref, dim=0) > 0.9


def test_moe_routes_in_fp32_under_autocast_and_returns_the_input_dtype():
    torch.manual_seed(0)
    moe = MoE(dim=32, hidden=64, num_experts=4, top_k=2, dropout=0.0).eval()
    x = torch.randn(2, 9, 32)
    probs, top_p, top_idx = moe.router(x.reshape(-1, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p16, tp16, ti16 = moe.router(x.reshape(-1, 32))
        C = 9
        slot, keep, top_p_b, aux = moe.route(x.reshape(-1, 32), C)
        y, stats = moe(x)
    # routing is exactly the fp32 routing: same probabilities, same experts, fp32 aux loss
    assert p16.dtype == tp16.dtype == aux.dtype == stats.aux_loss.dtype == torch.float32
    assert torch.equal(p16, probs) and torch.equal(ti16, top_idx)
    y_ref, stats_ref = moe(x)
    assert y.dtype == x.dtype and stats.aux_loss.item() == stats_ref.aux_loss.item()
    torch.testing.assert_close(y, y_ref, atol=2e-2, rtol=2e-2)


def test_lamb_applies_the_trust_ratio_at_weight_decay_zero():
    """With the trust ratio, every parameter's first update has norm lr * ||w|| (Adam's first
    step has elements of size ~lr, so without it the norm would be ~lr * sqrt(numel))."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    cfg = dataclasses.replace(Config(), lr=0.1, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 16)).square().sum().backward()
    opt.step()
    for w0, p in zip(before, model.parameters()):
        step = (p.detach() - w0).norm()
        assert step.item() == pytest.approx(0.1 * w0.norm().item(), rel=1e-4)


def test_imagenet_training_transform_is_the_briefs_order():
    """Inception crop (area 0.05-1) -> resize -> flip -> RandAugment(2 ops, magnitude 15) ->
    [-1, 1], read from the composed transform."""
    tf = train_transform(224, 2, 15, crop=True)
    steps = [type(t).__name__ for t in tf.transforms]
    assert steps[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip",
                         "RandAugment"], steps
    crop, flip, ra = tf.transforms[:3]
    assert crop.size == (224, 224) and crop.scale == (0.05, 1.0) and flip.p == 0.5
    assert ra.num_layers == 2 and {op.magnitude for op in ra.ops} == {15}
    norm = tf.transforms[-1]
    assert type(norm).__name__ == "Normalize"
    assert norm.mean.tolist() == norm.std.tolist() == [0.5] * 3          # [0, 1] -> [-1, 1]
    assert not any("ColorJitter" in n for n in steps)
    # the in-memory path (CIFAR-10): flip -> RandAugment on a PIL view
    names = [type(t).__name__ for t in train_transform(32, 2, 15, crop=False).transforms]
    assert names.index("RandomHorizontalFlip") < names.index("RandAugment")


def test_mixup_draws_one_lambda_per_sample_with_smoothing():
    """The official mix_up samples batch_size lambdas: the per-sample weights of the pair's two
    labels differ across the batch and the soft targets keep the smoothing mass."""
    np.random.seed(0)
    cfg = dataclasses.replace(Config(), mixup_alpha=0.5, label_smoothing=0.1)
    mix = build_mixup(cfg, 10)
    x = torch.randn(8, 3, 4, 4)
    y = torch.arange(8)
    xm, t = mix(x.clone(), y)
    assert t.shape == (8, 10) and torch.allclose(t.sum(1), torch.ones(8))
    lam = (t[torch.arange(8), y] - 0.01) / 0.9                    # weight of the own label
    assert len({round(v, 4) for v in lam.tolist()}) > 4           # per sample, not per batch
    torch.testing.assert_close(xm, lam.view(8, 1, 1, 1) * x + (1 - lam.view(8, 1, 1, 1)) * x.flip(0),
                               atol=1e-5, rtol=1e-5)
    _, t0 = build_mixup(dataclasses.replace(cfg, mixup_alpha=0.0), 10)(x, y)
    assert torch.allclose(t0[torch.arange(8), y], torch.full((8,), 0.91))


def test_a_corrupt_jpeg_is_named_or_skipped_and_counted(tmp_path):
    write_imagenet(tmp_path, per_class=(3, 2))
    bad = tmp_path / "train" / "n01443537" / "n01443537_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])                          # a truncated JPEG
    cfg = dataclasses.replace(Config(**PRESETS["tiny"]), data=str(tmp_path), randaug_ops=2)
    train, _, _ = build_datasets(cfg)
    index = [p for p, _ in train.samples].index(str(bad))
    with pytest.raises(DataError, match=f"cannot read image {bad}.*--skip_bad_images true"):
        train[index]
    train, _, _ = build_datasets(dataclasses.replace(cfg, skip_bad_images=True))
    x, label = train[index]
    assert x.shape == (3, 32, 32) and train.skipped.item() == 1
    assert all(train[i][0].shape == (3, 32, 32) for i in range(len(train)))
    assert train.skipped.item() == 2


def test_loader_uses_workers_and_pinned_memory_on_cuda_only():
    from widenet.train import loader_options
    assert loader_options(-1, "cpu") == dict(num_workers=0, pin_memory=False)
    cuda = loader_options(-1, "cuda")
    assert cuda["pin_memory"] is True and 1 <= cuda["num_workers"] <= 8 or (os.cpu_count() or 1) < 2
    assert loader_options(3, "cpu") == dict(num_workers=3, pin_memory=False)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_expert_parallel_bf16_on_two_gpus_with_nccl(tmp_path):
    """The GPU check of the issue: widenet_tiny, bf16 autocast, experts over 2 GPUs (NCCL),
    100 steps without error and a finite loss."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "widenet.train", "--", "--mode", "expert", "--device", "cuda", "--amp", "true",
           "--steps", "100", "--warmup_steps", "10", "--eval_every", "50", "--quiet",
           "--out_dir", str(tmp_path), "--run", "gpu"]
    subprocess.run(cmd, check=True, timeout=600)
    rows = read_metrics(tmp_path / "gpu" / "metrics.jsonl")
    assert max(r["step"] for r in rows) == 100
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
