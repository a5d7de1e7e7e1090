"""F2C's loss on hand-computed examples (in-pool probes: CosFace / ArcFace / SV margin softmax;
out-of-pool probes: the mean of the clipped top-k cosines), the EMA update of the gallery net,
one F2C pass, and the baselines' margin heads."""
import math

import pytest
import torch

from f2c.models import (F2C, MarginFC, PartialFC, create_backbone, ema_update_,
                        hard_negatives, margin_logits, pool_loss)

COS = torch.tensor([[0.5, 0.8, -0.2, 0.1, 0.3],
                    [0.9, -0.4, 0.35, 0.6, -0.1],
                    [0.2, 0.7, 0.0, -0.3, 0.4]])


def ce(logits, t):
    return -logits[t] + math.log(sum(math.exp(v) for v in logits))


def test_cosface_in_pool_probes():
    s, m = 32.0, 0.4
    target = torch.tensor([1, -1, 4])
    loss, ce_part, neg = pool_loss(COS, target, s, "cosface", m, k=3)
    rows = [[s * v for v in COS[0].tolist()], [s * v for v in COS[2].tolist()]]
    rows[0][1] = s * (0.8 - m)
    rows[1][4] = s * (0.4 - m)
    expect_ce = (ce(rows[0], 1) + ce(rows[1], 4)) / 2
    expect_neg = (0.9 + 0.6 + 0.35) / 3          # the outlier row: top-3, none negative
    assert ce_part.item() == pytest.approx(expect_ce, rel=1e-5)
    assert neg.item() == pytest.approx(expect_neg, rel=1e-6)
    assert loss.item() == pytest.approx(expect_ce + expect_neg, rel=1e-5)


def test_arcface_and_sv_margins():
    s, m = 32.0, 0.5
    target = torch.tensor([1, 0, 4])
    _, got, neg = pool_loss(COS, target, s, "arcface", m, k=3)
    expect = 0.0
    for r, t in enumerate(target.tolist()):
        row = [s * v for v in COS[r].tolist()]
        row[t] = s * math.cos(math.acos(COS[r, t].item()) + m)
        expect += ce(row, t) / 3
    assert got.item() == pytest.approx(expect, rel=1e-5) and neg.item() == 0.0
    # SV: hard negatives (cos > gt - m) -> 1.2 cos + 0.2; target gt - m when gt > m
    out = margin_logits(COS[:1], torch.tensor([1]), "sv", 0.35)[0].tolist()
    assert out == pytest.approx([1.2 * 0.5 + 0.2, 0.8 - 0.35, -0.2, 0.1, 0.3])


def test_outliers_clip_negative_cosines_at_zero():
    cos = torch.tensor([[-0.5, 0.2, -0.1, -0.9], [-0.3, -0.2, -0.6, -0.1]])
    loss, ce_part, neg = pool_loss(cos, torch.tensor([-1, -1]), 32.0, "cosface", 0.4, k=3)
    assert ce_part.item() == 0.0
    assert neg.item() == pytest.approx((0.2 + 0 + 0 + 0 + 0 + 0) / 6)
    assert loss.item() == pytest.approx(neg.item())
    # masked (never used) columns are left out of both terms
    valid = torch.tensor([True, True, False, False])
    _, _, neg = pool_loss(torch.tensor([[0.1, 0.2, 0.9, 0.8]]), torch.tensor([-1]), 32.0,
                          "cosface", 0.4, k=3, valid=valid)
    assert neg.item() == pytest.approx((0.2 + 0.1 + 0) / 3)


def test_k_of_the_outlier_term():
    assert [hard_negatives(q) for q in (2, 100, 15000, 40000, 10 ** 6)] == [2, 3, 3, 8, 10]


def test_ema_updates_parameters_only():
    torch.manual_seed(0)
    probe, gallery = create_backbone("ir_tiny"), create_backbone("ir_tiny")
    gallery.train()(torch.randn(4, 3, 32, 32))               # its own BN statistics
    before = {k: v.clone() for k, v in gallery.state_dict().items()}
    ema_update_(gallery, probe, 0.99)
    params = dict(probe.named_parameters())
    for name, value in gallery.state_dict().items():
        if name in params:
            torch.testing.assert_close(value, 0.99 * before[name] + 0.01 * params[name].detach())
        else:
            assert torch.equal(value, before[name]), name     # running statistics untouched


def test_one_f2c_pass_inserts_then_looks_up():
    torch.manual_seed(0)
    model = F2C(create_backbone("ir_tiny"), pool_size=8, margin=0.4, scale=32.0)
    p = model.probe_features(torch.randn(3, 3, 32, 32))
    g = torch.nn.functional.normalize(torch.randn(4, 128), dim=1)
    loss, stats = model.pass_loss(p, torch.tensor([7, 9, 3]), g, [7, 3, 5, 7])
    assert stats["outliers"] == 1 and stats["probes"] == 3          # 9 is not in the pool
    q = model.pool.queue
    target = torch.tensor([0, -1, 1])
    w2 = q[0].clone()
    w2[0] = q[1, 0]                                                  # 7 came twice
    expect = (pool_loss(p @ q[0].T, target, 32.0, "cosface", 0.4, model.k)[0]
              + pool_loss(p @ w2.T, target, 32.0, "cosface", 0.4, model.k)[0])
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None
    assert all(p.grad is None for p in model.gallery.parameters())


def test_fc_heads_on_a_hand_example():
    head = MarginFC(5, 3, scale=10.0, margin=0.3, margin_type="cosface")
    emb = torch.randn(4, 3)
    labels = torch.tensor([0, 4, 2, 4])
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(head.weight).T
    expect = sum(ce([10 * (c - 0.3 * (j == t)) for j, c in enumerate(cos[i].tolist())], t)
                 for i, t in enumerate(labels.tolist())) / 4
    assert head(emb, labels).item() == pytest.approx(expect, rel=1e-5)
    # Partial FC with every centre sampled is the full FC
    pfc = PartialFC(5, 3, sample_rate=1.0, scale=10.0, margin=0.3, margin_type="cosface")
    assert pfc(emb, labels).item() == pytest.approx(expect, rel=1e-5)
    # with r < 1: positives always kept, the loss is over fewer classes (so smaller)
    pfc = PartialFC(50, 3, sample_rate=0.1, shards=2, scale=10.0, margin=0.3,
                    margin_type="cosface")
    full = MarginFC(50, 3, scale=10.0, margin=0.3, margin_type="cosface")
    assert pfc(emb, labels).item() < full(emb, labels).item()


def test_class_centres_are_the_same_rows_whatever_the_shard():
    full = MarginFC(9000, 4, seed=5).weight
    part = MarginFC(9000, 4, seed=5, rows=(4000, 8500)).weight
    assert torch.equal(part, full[4000:8500])
    assert full.std().item() == pytest.approx(0.01, rel=0.05)
