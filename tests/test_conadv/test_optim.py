"""The large-batch recipe: timm's LARS equals its formula on a hand-computed example (weight decay
and trust ratio on weights only), LAMB gets the same groups, the learning rate scales with the
batch, and the schedule is linear warm-up then polynomial decay."""
import math

import pytest
import torch
import torch.nn as nn

from conadv.config import Config
from conadv.optim import build_optimizer, param_groups, scaled_lr
from shared.train.schedule import lr_curve


def _lars(**kw):
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))     # ||W|| = 5
        layer.bias.copy_(torch.tensor([1.0, -2.0]))
    cfg = Config(lr=2.0, lr_scaling="none", weight_decay=0.1, trust_coeff=0.01, momentum=0.9,
                 model="resnet_tiny", **kw)
    return layer, build_optimizer(layer, cfg)


def _set_grads(layer):
    layer.weight.grad = torch.tensor([[0.6, 0.0], [0.0, 0.8]])           # ||g|| = 1
    layer.bias.grad = torch.tensor([0.5, 0.5])


def test_lars_update_equals_its_formula_on_a_hand_computed_example():
    layer, opt = _lars()
    assert type(opt).__name__ == "Lars"
    _set_grads(layer)
    opt.step()
    # weight: trust = 0.01 * 5 / (1 + 0.1 * 5) = 1/30; u = g + 0.1 W = diag(0.9, 1.2);
    # m = trust * u = diag(0.03, 0.04); W = W - 2 m = diag(2.94, 3.92)
    torch.testing.assert_close(layer.weight, torch.tensor([[2.94, 0.0], [0.0, 3.92]]),
                               rtol=0, atol=1e-6)
    # bias: no weight decay, no trust ratio: m = g; b = b - 2 g = (0, -3)
    torch.testing.assert_close(layer.bias, torch.tensor([0.0, -3.0]), rtol=0, atol=1e-6)
    _set_grads(layer)
    opt.step()
    # second step, same gradient: ||W|| = 4.9, trust = 0.049 / 1.49, u = g + 0.1 W,
    # m = 0.9 m + trust u, W = W - 2 m
    trust = 0.01 * 4.9 / (1 + 0.1 * 4.9)
    m = [0.9 * 0.03 + trust * (0.6 + 0.294), 0.9 * 0.04 + trust * (0.8 + 0.392)]
    expect = torch.tensor([[2.94 - 2 * m[0], 0.0], [0.0, 3.92 - 2 * m[1]]])
    torch.testing.assert_close(layer.weight, expect, rtol=0, atol=1e-6)
    # bias: m = 0.9 * 0.5 + 0.5 = 0.95; b = b - 1.9
    torch.testing.assert_close(layer.bias, torch.tensor([-1.9, -4.9]), rtol=0, atol=1e-6)


def test_biases_and_batchnorm_parameters_have_no_decay_and_no_trust_ratio():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, plain = param_groups(net, 0.05)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in plain["params"]} == {id(net[0].bias), id(net[1].weight),
                                                id(net[1].bias), id(net[3].bias)}
    assert decay["weight_decay"] == 0.05 and decay["always_adapt"]
    assert plain["weight_decay"] == 0.0 and not plain["always_adapt"]
    lamb = build_optimizer(net, Config(model="efficientnet_tiny", weight_decay=0.05))
    assert type(lamb).__name__ == "Lamb" and lamb.defaults["max_grad_norm"] is None
    assert [g["weight_decay"] for g in lamb.param_groups] == [0.05, 0.0]


def test_learning_rate_scales_with_the_batch():
    assert scaled_lr(Config(lr=2.0, base_batch=128, batch_size=512)) == pytest.approx(4.0)
    assert scaled_lr(Config(lr=2.0, base_batch=128, batch_size=32,
                            lr_scaling="linear")) == pytest.approx(0.5)
    assert scaled_lr(Config(lr=2.0, base_batch=128, batch_size=32,
                            lr_scaling="none")) == pytest.approx(2.0)


def test_schedule_is_linear_warmup_then_polynomial_decay():
    lr = lr_curve("poly", 1.0, 12, warmup_steps=2, power=2.0)
    assert lr[0] == 0.0 and lr[1] == pytest.approx(0.5)
    for t in range(2, 12):
        assert lr[t] == pytest.approx((1 - (t - 2) / 10) ** 2), t
    assert all(a >= b for a, b in zip(lr[2:], lr[3:]))
    assert not math.isclose(lr[7], lr_curve("linear", 1.0, 12, warmup_steps=2)[7])
