"""Every parallel mode against the serial GPT built from the same full weights.

For each world size one spawn checks, on every rank:
  * one transformer block (LayerNorms, the four Linears, attention): output piece and input
    gradient piece against the serial block, and every parameter gradient after gathering;
  * the whole model (embeddings, blocks, LM head, vocab-parallel loss): loss, this rank's logits
    piece, the gathered weights (== serial state dict) and every gathered parameter gradient.

Tolerance: float32, 1e-5 relative to the largest magnitude of the reference tensor. The parallel
code evaluates the same sums split into partial sums (SUMMA steps, reduce-scatters, all-reduces),
so results differ from serial only by summation order: a few ulps (1.2e-7) times at most a few
hundred terms here. LayerNorm uses E[x²]−E[x]² (one all-reduce), which loses a few more bits
when |mean| ≫ std; the inputs here have |mean| ≲ std.

Sizes: hidden 24, heads 12 (head_dim 2), vocab 36, seq 5, batch 12; not powers of two and
divisible by every grid below (1d p=2,3,4; 2d q=2; 2.5d q=2 d=1,2; 3d q=2); the odd 2D grid
q=3 (9 ranks) uses hidden 36, heads 6.
"""
import pytest
import torch

from shared.parallel import build_topology, spawn
from tensor_parallel.models import GPT, GPTConfig
from tensor_parallel.parallelize import (parallelize, serial_state_dict,
                                         check_shapes)

TOL = 1e-5
CFG = GPTConfig(vocab_size=36, seq_len=5, hidden=24, heads=12, layers=2, dropout=0.0)
# an odd 2D grid (q = 3, 9 ranks) needs hidden % 9 and heads % 3
CFG_Q3 = GPTConfig(vocab_size=36, seq_len=5, hidden=36, heads=6, layers=1, dropout=0.0)
BATCH = 12


def _assert_close(name, got, want, tol=TOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    scale = max(want.abs().max().item(), 1e-12)
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} x {scale:.3g}"


def _serial_model(cfg=CFG):
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():                        # non-trivial biases and LayerNorm affine
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _check_mode(env, mode, depth, cfg=CFG):
    topo = build_topology(mode, depth=depth)
    serial = _serial_model(cfg)
    pmodel = parallelize(serial, topo)
    plan = pmodel.plan
    torch.manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))
    targets = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))

    # --- one block -------------------------------------------------------------------------
    block = serial.blocks[0]
    x = torch.randn(BATCH, cfg.seq_len, cfg.hidden)
    dy = torch.randn_like(x)
    xs = x.clone().requires_grad_()
    ys = block(xs)
    ys.backward(dy)
    pblock = pmodel.blocks[0]
    xp = plan.shard_activation(x).clone().requires_grad_()
    yp = pblock(xp)
    _assert_close(f"{mode} block output", yp, plan.shard_activation(ys.detach()))
    yp.backward(plan.shard_activation(dy))
    _assert_close(f"{mode} block dX", xp.grad, plan.shard_activation(xs.grad))
    names = {"ln1": block.ln1, "qkv": block.attn.qkv, "proj": block.attn.proj,
             "ln2": block.ln2, "fc1": block.mlp.fc1, "fc2": block.mlp.fc2}
    for local, ref in names.items():
        got = getattr(pblock, local).serial_state(lambda p: p.grad)
        for pname, g in got.items():
            _assert_close(f"{mode} block {local}.{pname} grad", g, getattr(ref, pname).grad)
    serial.zero_grad()
    pmodel.zero_grad()

    # --- whole model -----------------------------------------------------------------------
    logits_s, loss_s = serial(idx, targets)
    loss_s.backward()
    logits_p, loss_p = pmodel(idx, targets)
    _assert_close(f"{mode} loss", loss_p.detach(), loss_s.detach())
    rows = pmodel.local_targets(torch.arange(BATCH))
    vg = plan.vocab_group
    v = cfg.vocab_size // vg.size
    want = logits_s.detach()[rows][..., vg.rank * v:(vg.rank + 1) * v]
    _assert_close(f"{mode} logits", logits_p.detach(), want)
    loss_p.backward()
    sd = serial.state_dict()
    values = serial_state_dict(pmodel)
    grads = serial_state_dict(pmodel, grad=True)
    assert set(values) == set(sd), f"{mode}: keys differ: {set(values) ^ set(sd)}"
    for name, p in serial.named_parameters():
        _assert_close(f"{mode} value {name}", values[name], p.detach(), tol=0.0)
        _assert_close(f"{mode} grad {name}", grads[name], p.grad)
    return loss_p.item()


def _check_world(env, cases):
    return [_check_mode(env, *case) for case in cases]


@pytest.mark.parametrize("world, cases", [
    (2, [("1d", 1)]),
    (3, [("1d", 1)]),
    (4, [("1d", 1), ("2d", 1), ("2p5d", 1)]),
    (8, [("2p5d", 2), ("3d", 1)]),
    (9, [("2d", 1, CFG_Q3)]),
])
def test_parallel_matches_serial(world, cases):
    losses = spawn(_check_world, world, cases, timeout_s=240)
    for per_rank in zip(*losses):   # the loss is the same scalar on every rank
        assert max(per_rank) - min(per_rank) <= 1e-6 * abs(per_rank[0])


def test_serial_model_runs_alone():
    """A grid of one (no process group) reproduces the serial model exactly."""
    serial = _serial_model()
    idx = torch.randint(0, CFG.vocab_size, (4, CFG.seq_len))
    for mode in ("1d", "2d", "2p5d", "3d"):
        pmodel = parallelize(serial, build_topology(mode))
        _, lp = pmodel(idx, idx)
        _, ls = serial(idx, idx)
        _assert_close(f"{mode} single", lp.detach(), ls.detach())


@pytest.mark.parametrize("mode, world, depth, cfg, batch, match", [
    ("2d", 4, 1, GPTConfig(hidden=30, heads=6), 4, "hidden=30 must be divisible by 4"),
    ("2d", 4, 1, GPTConfig(hidden=24, heads=3), 4, "heads=3 must be divisible by 2"),
    ("2p5d", 8, 2, GPTConfig(hidden=24, heads=4), 6, "batch_size=6 must be divisible by 4"),
    ("3d", 8, 1, GPTConfig(hidden=24, heads=4), 6, "batch_size=6 must be divisible by 4"),
    ("1d", 4, 1, GPTConfig(hidden=24, heads=6), 4, "heads=6 must be divisible by 4"),
])
def test_bad_shapes_fail_before_work(mode, world, depth, cfg, batch, match):
    topo = build_topology(mode, world_size=world, rank=0, depth=depth)
    with pytest.raises(ValueError, match=match):
        check_shapes(cfg, topo, batch)


@pytest.mark.parametrize("mode, world, depth, match", [
    ("2d", 8, 1, "square number of ranks; got 8"),
    ("2p5d", 8, 3, "depth d dividing them"),
    ("2p5d", 12, 2, "q²·d ranks"),
    ("3d", 4, 1, "cube number of ranks; got 4"),
])
def test_bad_world_sizes(mode, world, depth, match):
    with pytest.raises(ValueError, match=match):
        build_topology(mode, world_size=world, rank=0, depth=depth)


def _dropout_worker(env):
    from shared.parallel import RNGStreams
    from tensor_parallel.parallelize import set_streams
    cfg = GPTConfig(vocab_size=36, seq_len=5, hidden=24, heads=12, layers=1, dropout=0.3)
    topo = build_topology("1d")
    pmodel = parallelize(_serial_model(cfg), topo)
    set_streams(pmodel, RNGStreams(5, topo.grid_rank))
    idx = torch.randint(0, cfg.vocab_size, (4, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    pmodel.train()
    x_train = pmodel.blocks[0](pmodel.embed(idx)).detach()
    pmodel.eval()
    x_eval = pmodel.blocks[0](pmodel.embed(idx)).detach()
    return x_train, x_eval


def test_1d_dropout_keeps_replicated_activations_identical():
    """1D residual-stream dropout uses the replicated stream (same mask on every rank) while
    attention dropout on the rank's own heads uses the sharded stream; the replicated residual
    stream therefore stays identical on all ranks."""
    (a_train, a_eval), (b_train, b_eval) = spawn(_dropout_worker, 2)
    assert not torch.equal(a_train, a_eval), "dropout had no effect"
    assert torch.equal(a_train, b_train)
    assert torch.equal(a_eval, b_eval)
