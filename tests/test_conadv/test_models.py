"""Models: dual BatchNorm routing (each branch its own statistics and affine weights, inference
on the main branch), normalisation inside the model, every registered model under bf16 autocast."""
import pytest
import torch
import torch.nn as nn

from conadv.models import create_model, dual_bns, list_models, route
from conadv.models.dual_bn import convert_dual_bn


def _net():
    torch.manual_seed(0)
    return convert_dual_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                         nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))))


def test_every_batchnorm_becomes_dual_and_starts_equal():
    net = _net()
    bns = dual_bns(net)
    assert len(bns) == 2
    plain = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert plain and all(n.endswith((".main", ".adv")) for n in plain), plain
    for bn in bns:
        assert bn.main.weight is not bn.adv.weight
        assert torch.equal(bn.main.weight, bn.adv.weight)
    names = [n for n, _ in net.named_parameters()]
    assert "1.main.weight" in names and "1.adv.weight" in names


def test_dual_bn_routes_clean_and_adversarial_batches_to_their_own_statistics():
    net = _net().train()
    bn = dual_bns(net)[0]
    clean, adv = torch.rand(6, 3, 7, 7), torch.rand(6, 3, 7, 7) * 3 + 1
    h_clean = net[0](clean)                            # what the first BN sees
    h_adv = net[0](adv)
    net(clean)                                         # main route (default)
    m = bn.main.momentum
    expect = (1 - m) * torch.zeros(4) + m * h_clean.mean((0, 2, 3))
    torch.testing.assert_close(bn.main.running_mean, expect)
    assert torch.equal(bn.adv.running_mean, torch.zeros(4))      # untouched
    main_before = bn.main.running_mean.clone()
    with route(net, "adv"):
        net(adv)
    torch.testing.assert_close(bn.adv.running_mean, m * h_adv.mean((0, 2, 3)))
    assert torch.equal(bn.main.running_mean, main_before)
    assert all(b.route == "main" for b in dual_bns(net))          # restored after the block
    # gradients reach only the branch that was used
    net.zero_grad()
    with route(net, "adv"):
        net(adv).sum().backward()
    assert bn.main.weight.grad is None and bn.adv.weight.grad is not None
    # inference uses the main branch: changing the adversarial one changes nothing
    net.eval()
    out = net(clean)
    with torch.no_grad():
        for b in dual_bns(net):
            b.adv.weight.mul_(3)
            b.adv.running_mean.add_(5)
    assert torch.equal(net(clean), out)


def test_normalisation_is_inside_the_model():
    model = create_model("resnet_tiny", 10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5)).eval()
    x = torch.rand(2, 3, 16, 16)
    expect = model.net((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
                       / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expect)
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_resnet50_is_torchvisions_with_dual_bn():
    import torchvision

    with torch.device("meta"):
        ours = create_model("resnet50", 1000)
        ref = torchvision.models.resnet50()
    n_bn = sum(m.weight.numel() * 2 for m in ref.modules() if isinstance(m, nn.BatchNorm2d))
    count = lambda m: sum(p.numel() for p in m.parameters())     # noqa: E731
    assert count(ours) == count(ref) + n_bn // 2 * 2                   # one more gamma/beta each
    assert len(dual_bns(ours)) == 53


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_under_bf16_autocast(name):
    size = 16
    torch.manual_seed(0)
    model = create_model(name, 10).train()
    x, y = torch.rand(2, 3, size, size), torch.tensor([1, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
        with route(model, "adv"):
            loss = loss + nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
