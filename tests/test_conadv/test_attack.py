"""The attack branch: a one-step L-inf sign attack through the adversarial BatchNorms, that leaves
no gradient in the weights and no trace in any BatchNorm statistics of the training model, made
from a snapshot of the weights taken at launch (later updates do not reach it), with the same
numbers on the worker thread as in line, also under bf16 autocast."""
import threading

import pytest
import torch
import torch.nn.functional as F

from conadv.attack import AdvBatch, AdvQueue, Attacker, fgsm
from conadv.models import create_model, dual_bns, route

EPS = 4 / 255


def _model():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", 10, mean=(0.5,) * 3, std=(0.25,) * 3).train()
    with torch.no_grad():                     # make the two branches differ
        for bn in dual_bns(model):
            bn.adv.weight.uniform_(0.5, 1.5)
            bn.adv.bias.uniform_(-0.2, 0.2)
            bn.main.weight.uniform_(0.5, 1.5)
    return model


def _batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g), torch.randint(10, (n,), generator=g)


def test_fgsm_is_one_sign_step_through_the_adversarial_batchnorms():
    model = _model()
    x, y = _batch()
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.001, 0.999])       # clamped at the borders
    adv = fgsm(model, x, y, EPS)
    xr = x.clone().requires_grad_(True)
    with route(model, "adv"):
        F.cross_entropy(model(xr), y).backward()
    step = EPS * xr.grad.sign()
    torch.testing.assert_close(adv, (x + step).clamp(0, 1), rtol=0, atol=1e-7)
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= EPS + 1e-7
    xm = x.clone().requires_grad_(True)
    F.cross_entropy(model(xm), y).backward()                         # the main branch differs
    assert not torch.equal(xm.grad.sign(), xr.grad.sign())
    # per micro-batch: the BatchNorm statistics of each half
    halves = torch.cat([fgsm(model, x[:4], y[:4], EPS), fgsm(model, x[4:], y[4:], EPS)])
    assert torch.equal(fgsm(model, x, y, EPS, micro_batch=4), halves)


@pytest.mark.parametrize("concurrent", [False, True])
def test_attack_leaves_no_gradient_and_no_batchnorm_statistics_in_the_model(concurrent):
    model = _model()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    attacker = Attacker(model, EPS, concurrent=concurrent)
    x, y = _batch()
    attacker.attack_now(x, y)
    attacker.launch(x, y, tag="t")
    tag, adv = attacker.wait()
    attacker.close()
    assert tag == "t" and adv.shape == x.shape
    assert all(p.grad is None for p in model.parameters())
    for n, b in model.named_buffers():                       # main and adversarial branches
        assert torch.equal(b, buffers[n]), n
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n


def test_launch_attacks_a_snapshot_of_the_weights_on_a_worker_thread():
    model = _model()
    x, y = _batch()
    expect = Attacker(model, EPS, concurrent=False).attack_now(x, y)
    attacker = Attacker(model, EPS, concurrent=True)
    threads = []
    orig = attacker._run

    def spy(*a):
        threads.append(threading.current_thread().name)
        return orig(*a)

    attacker._run = spy
    attacker.launch(x, y)
    with torch.no_grad():                                    # the weights move on meanwhile
        for p in model.parameters():
            p.add_(0.5)
    _, adv = attacker.wait()
    attacker.close()
    assert threads and threads[0].startswith("conadv-attack")
    assert torch.equal(adv, expect)                          # made from the launch-time weights
    assert not torch.equal(Attacker(model, EPS, concurrent=False).attack_now(x, y), expect)


def test_worker_follows_bf16_autocast_like_the_inline_attack():
    model = _model()
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inline = Attacker(model, EPS, concurrent=False).attack_now(x, y)
        worker = Attacker(model, EPS, concurrent=True)
        worker.launch(x, y)
        _, adv = worker.wait()
        worker.close()
    fp32 = Attacker(model, EPS, concurrent=False).attack_now(x, y)
    assert inline.dtype == torch.float32 and torch.equal(adv, inline)
    assert not torch.equal(inline, fp32)                     # bf16 did take effect


def test_queue_is_first_in_first_out_and_survives_a_checkpoint():
    q = AdvQueue()
    for s in (3, 4):
        t = torch.full((2, 3, 4, 4), float(s))
        q.push(AdvBatch(s, s - 2, t, torch.tensor([s, s]), t + 0.5))
    with pytest.raises(RuntimeError, match="out of order"):
        q.push(AdvBatch(9, 7, t, t, t))
    with pytest.raises(RuntimeError, match="holds steps \\[3, 4\\]"):
        q.pop(4)
    state = q.state_dict()
    assert q.pop(3).made_at == 1 and len(q) == 1
    r = AdvQueue()
    r.load_state_dict(state, "cpu")
    first = r.pop(3)
    assert torch.equal(first.adv, torch.full((2, 3, 4, 4), 3.5)) and r.pop(4).step == 4


@pytest.mark.gpu
def test_cuda_attack_on_a_second_stream_equals_the_inline_attack():
    torch.backends.cudnn.deterministic = True
    model = _model().cuda()
    x, y = (t.cuda() for t in _batch(32))
    inline = Attacker(model, EPS, concurrent=False).attack_now(x, y)
    attacker = Attacker(model, EPS, concurrent=True)
    assert attacker._stream is not None
    attacker.launch(x, y)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)                       # the training stream moves on
    _, adv = attacker.wait()
    attacker.close()
    assert torch.equal(adv, inline)
