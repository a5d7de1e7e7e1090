"""Every parallel mode against the serial GPT built from the same full weights.

For each mode one spawned grid checks, on every rank:
  * one transformer block (LayerNorms, the four Linears, attention): output piece and input
    gradient piece against the serial block, and every parameter gradient after gathering;
  * the whole model (embeddings, blocks, LM head, vocab-parallel loss): loss, this rank's logits
    piece, the gathered weights (== serial state dict) and every gathered parameter gradient;
    cutting the serial state dict into this rank's pieces (``shard_state``, what a resume under
    another mode does) gives back exactly the rank's parameters;
  * clipping: the global gradient norm that the training core computes from the model's
    ``grad_norm_parts`` equals ``torch.nn.utils.clip_grad_norm_`` of the serial model, and the
    clipped gradients, gathered, equal the serial clipped gradients.

Tolerance: float32, 1e-5 relative to the largest magnitude of the reference tensor. The parallel
code evaluates the same sums split into partial sums (SUMMA steps, reduce-scatters, all-reduces),
so results differ from serial only by summation order: a few ulps (1.2e-7) times at most a few
hundred terms here. The 2D/2.5D/3D LayerNorms (two-pass statistics) are also checked against
``torch.nn.LayerNorm`` at mean 1e3 / std 1 and mean 0 / std 1e-3 (tolerance ``LN_TOL``).

Sizes: hidden 24, heads 12 (head_dim 2), vocab 36, seq 5, batch 12; not powers of two and
divisible by every grid below (1d p=3,4; 2d q=2; 2.5d q=2 d=2; 3d q=2); the odd 2D grid q=3
(9 ranks) uses hidden 36, heads 6. Three spawns (4, 8 and 9 ranks) hold every case: a grid
smaller than the world runs as data-parallel replicas of it (TP × DP: 1d p=2 × 2 replicas on 4
ranks, 2d q=2 × 2 on 8, 1d p=3 × 3 on 9): each replica takes its chunk of the global batch, the
loss is the global batch's and the training core's gradient sync (``grad_plans``) sums the
replicas' gradients, so loss, logits and every gradient (and the clipped ones) equal the serial
model's on the whole batch. (2.5D with d=1 is 2D with another batch group; test_train.py
evaluates a checkpoint under it.)
"""
import copy

import pytest
import torch

from shared.parallel import RNGStreams, build_topology, spawn
from shared.parallel.topology import TopologyError
from shared.train.gradients import clip_gradients, sync_gradients
from tensor_parallel.models import GPT, GPTConfig, num_parameters
from shared.parallel.topology import world_group
from shared.train import load_sharded, save_sharded
from tensor_parallel.parallel import (build_grid, build_parallel, check_shapes, parallelize,
                                      serial_state_dict, set_streams, shard_state)

TOL = 1e-5
# LayerNorm at mean 1e3: the mean itself carries fp32 rounding of ~1e3·6e-8 ≈ 6e-5 (in torch's
# kernel too, summed in another order), i.e. ~6e-5 of std 1 in the normalized output
LN_TOL = 1e-3
# bf16 autocast (8 mantissa bits, 2^-8 ≈ 4e-3 per rounding of each matmul's inputs and output)
# against the fp32 serial model: loss and every gradient within 5e-2 of the largest magnitude.
# (The serial model under the same autocast differs from fp32 by ~3e-2 on these gradients; the
# parallel modes measured 2.5e-2 to 3.2e-2.)
AMP_TOL = 5e-2
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


def _grads(pmodel):
    """Gathered gradients (zeros where a parameter has none)."""
    return serial_state_dict(pmodel, pick=lambda p: p.grad if p.grad is not None
                             else torch.zeros_like(p))


def _check_layernorm(mode, ln, pln, layout, cfg):
    """The distributed LayerNorm against torch's at inputs where a one-pass variance
    (E[x²] − E[x]²) cancels catastrophically (mean 1e3, std 1: error ~0.5 in fp32) or loses
    its scale (mean 0, std 1e-3). Output and dX, relative to the largest reference value."""
    g = torch.Generator().manual_seed(3)
    for mean, std in ((1e3, 1.0), (0.0, 1e-3)):
        x = mean + std * torch.randn(BATCH, cfg.seq_len, cfg.hidden, generator=g)
        dy = torch.randn(x.shape, generator=g)
        xs = x.clone().requires_grad_()
        ys = ln(xs)
        (ys * dy).sum().backward()
        xp = layout.shard_activation(x).clone().requires_grad_()
        yp = pln(xp)
        (yp * layout.shard_activation(dy)).sum().backward()
        _assert_close(f"{mode} LayerNorm y at mean {mean} std {std}", yp.detach(),
                      layout.shard_activation(ys.detach()), tol=LN_TOL)
        _assert_close(f"{mode} LayerNorm dX at mean {mean} std {std}", xp.grad,
                      layout.shard_activation(xs.grad), tol=LN_TOL)
        ln.zero_grad()


def _check_mode(env, mode, depth, grid=None, cfg=CFG):
    topo = build_topology(mode, depth=depth, grid_size=grid)
    # --- shard-only construction: each rank's pieces alone equal the serial model's ----------
    torch.manual_seed(7)
    reference = GPT(cfg).state_dict()
    torch.manual_seed(7)
    alone = build_parallel(cfg, topo)
    local = sum(p.numel() for p in alone.parameters())
    assert local < num_parameters(cfg) / 1.5, f"{mode}: {local} elements on one rank"
    values = serial_state_dict(alone)
    assert set(values) == set(reference)
    for name, want in reference.items():
        assert torch.equal(values[name], want), f"{mode}: shard-only {name} differs"

    serial = _serial_model(cfg)
    pmodel = parallelize(copy.deepcopy(serial), topo)
    layout = pmodel.layout
    torch.manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))
    targets = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))

    if mode != "1d":                              # (1D keeps torch's LayerNorm whole)
        _check_layernorm(mode, serial.blocks[0].ln1, pmodel.gpt.blocks[0].ln1, layout, cfg)
        pmodel.zero_grad()

    # --- one block -------------------------------------------------------------------------
    block = serial.blocks[0]
    x = torch.randn(BATCH, cfg.seq_len, cfg.hidden)
    dy = torch.randn_like(x)
    xs = x.clone().requires_grad_()
    ys = block(xs)
    (ys * dy).sum().backward()       # = ys.backward(dy), without torch's lazy sympy import
    xp = layout.shard_activation(x).clone().requires_grad_()
    yp = pmodel.gpt.blocks[0](xp)
    _assert_close(f"{mode} block output", yp, layout.shard_activation(ys.detach()))
    (yp * layout.shard_activation(dy)).sum().backward()
    _assert_close(f"{mode} block dX", xp.grad, layout.shard_activation(xs.grad))
    got = _grads(pmodel)
    for name, p in block.named_parameters():
        _assert_close(f"{mode} block {name} grad", got[f"blocks.0.{name}"], p.grad)
    serial.zero_grad()
    pmodel.zero_grad()

    # --- whole model -----------------------------------------------------------------------
    logits_s, loss_s = serial(idx, targets)
    loss_s.backward()
    logits_p, loss_p = pmodel(idx, targets)
    _assert_close(f"{mode} loss", loss_p.detach(), loss_s.detach())
    rows = pmodel.local_rows(torch.arange(BATCH))
    vg = layout.vocab_group
    v = cfg.vocab_size // vg.size
    want = logits_s.detach()[rows][..., vg.rank * v:(vg.rank + 1) * v]
    _assert_close(f"{mode} logits", logits_p.detach(), want)
    loss_p.backward()
    sync, parts = pmodel.grad_plans()          # what the training core runs after backward:
    sync_gradients(sync)                       # the sum over data replicas (no-op without)
    sd = serial.state_dict()
    values = serial_state_dict(pmodel)
    grads = serial_state_dict(pmodel, grad=True)
    assert set(values) == set(sd), f"{mode}: keys differ: {set(values) ^ set(sd)}"
    for name, p in serial.named_parameters():
        _assert_close(f"{mode} value {name}", values[name], p.detach(), tol=0.0)
        _assert_close(f"{mode} grad {name}", grads[name], p.grad)
    pieces = shard_state(pmodel, sd)                         # and back: this rank's pieces
    local = pmodel.gpt.state_dict()
    assert set(pieces) == set(local)
    assert all(torch.equal(pieces[k], local[k]) for k in local), f"{mode}: shard_state differs"

    # --- clipping by the global norm -------------------------------------------------------
    listed = [p for part in parts for p in part.params]
    assert len(listed) == len(set(map(id, listed))) == len(list(pmodel.parameters()))
    full = torch.nn.utils.get_total_norm([p.grad for p in serial.parameters()])
    max_norm = 0.3 * full.item()                             # clipping active
    want_norm = torch.nn.utils.clip_grad_norm_(serial.parameters(), max_norm)
    norm = clip_gradients(parts, max_norm)
    _assert_close(f"{mode} grad norm", norm.reshape(()), want_norm.reshape(()))
    clipped = serial_state_dict(pmodel, grad=True)
    for name, p in serial.named_parameters():
        _assert_close(f"{mode} clipped grad {name}", clipped[name], p.grad)
    return loss_p.item()


def _dropout_check(env):
    """1D (p=2) with dropout: the residual stream's masks come from the replicated stream, so
    the block output stays identical on every rank; attention dropout uses the sharded one."""
    cfg = GPTConfig(vocab_size=36, seq_len=5, hidden=24, heads=12, layers=1, dropout=0.3)
    topo = build_topology("1d", grid_size=2)
    pmodel = parallelize(_serial_model(cfg), topo)
    set_streams(pmodel, RNGStreams(5, topo.grid_rank))
    x = torch.randn(4, cfg.seq_len, cfg.hidden, generator=torch.Generator().manual_seed(0))
    block = pmodel.gpt.blocks[0]
    block.train()
    y_train = block(x).detach()
    block.eval()
    return y_train, block(x).detach()


def _checkpointing_check(env, mode):
    """Activation checkpointing per block gives bit-identical loss and gradients, with dropout
    on (the recomputation replays the RNG streams)."""
    cfg = GPTConfig(vocab_size=36, seq_len=5, hidden=24, heads=12, layers=2, dropout=0.3)
    topo = build_topology(mode, grid_size=2 if mode == "1d" else None)
    pmodel = parallelize(_serial_model(cfg), topo)
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len), generator=g)
    runs = []
    for on in (False, True):
        pmodel.set_checkpointing(on)
        set_streams(pmodel, RNGStreams(11, topo.grid_rank))
        pmodel.zero_grad(set_to_none=True)
        _, loss = pmodel(idx, idx)
        loss.backward()
        runs.append([loss.detach()] + [p.grad.clone() for p in pmodel.parameters()])
    return all(torch.equal(a, b) for a, b in zip(*runs))


def _regather_check(env, mode):
    """3D with ``regather`` (backward gathers X and W again instead of saving them) and with
    overlap off gives bit-identical loss and gradients, in fp32 and under bf16 autocast."""
    from tensor_parallel.parallel_2d import OVERLAP
    topo = build_topology(mode)
    pmodel = parallelize(_serial_model(), topo)
    g = torch.Generator().manual_seed(6)
    idx = torch.randint(0, CFG.vocab_size, (BATCH, CFG.seq_len), generator=g)
    same = []
    for amp in (False, True):
        runs = []
        for regather, overlap in ((False, True), (True, True), (True, False)):
            pmodel.set_regather(regather)
            OVERLAP.on = overlap
            pmodel.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                _, loss = pmodel(idx, idx)
            loss.backward()
            runs.append([loss.detach()] + [p.grad.clone() for p in pmodel.parameters()])
        OVERLAP.on = True
        same += [all(torch.equal(a, b) for a, b in zip(runs[0], r)) for r in runs[1:]]
    pmodel.set_regather(False)
    return all(same)


def _amp_check(env, mode):
    """bf16 CPU autocast of the parallel model against the fp32 serial model: loss and every
    gathered gradient, relative error (AMP_TOL)."""
    topo = build_topology(mode)
    serial = _serial_model()
    pmodel = parallelize(copy.deepcopy(serial), topo)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, CFG.vocab_size, (BATCH, CFG.seq_len), generator=g)
    _, ls = serial(idx, idx)
    ls.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, lp = pmodel(idx, idx)
    assert lp.dtype == torch.float32                   # the loss is computed in fp32
    lp.backward()
    grads = _grads(pmodel)
    errs = {"loss": abs(lp.item() - ls.item()) / abs(ls.item())}
    for name, p in serial.named_parameters():
        errs[name] = ((grads[name] - p.grad).abs().max() / p.grad.abs().max()).item()
    assert all(p.dtype == torch.float32 for p in pmodel.parameters())   # fp32 master weights
    return errs


def _reshard_check(env, shards_dir):
    """A sharded checkpoint (torch.distributed.checkpoint) of 3D on 8 ranks loads into 2.5D
    (q=2, d=2) and into 2D × 2 data replicas: weights and AdamW moments equal, piece by piece."""
    torch.manual_seed(7)
    serial = GPT(CFG)
    moments = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
               for i, (k, v) in enumerate(serial.state_dict().items())}
    torch.manual_seed(7)
    src = build_parallel(CFG, build_topology("3d"))
    opt = torch.optim.AdamW(src.parameters())
    state = src.sharded_state_dict(opt)
    for name, piece in shard_state(src, moments).items():       # moments: known values
        opt.state[dict(src.gpt.named_parameters())[name]]["exp_avg"].copy_(piece)
    state["optim.step"].fill_(5.0)
    name = save_sharded(state, shards_dir, 5, world_group())
    out = []
    for mode, depth, grid in (("2p5d", 2, None), ("2d", 1, 4)):
        torch.manual_seed(8)                                    # other initial values
        dst = build_parallel(CFG, build_topology(mode, depth=depth, grid_size=grid))
        dopt = torch.optim.AdamW(dst.parameters())
        dest = dst.sharded_state_dict(dopt)
        load_sharded(dest, shards_dir / name)
        got = serial_state_dict(dst)
        got_m = serial_state_dict(dst, pick=lambda p: dopt.state[p]["exp_avg"])
        out.append(all(torch.equal(got[k], v) for k, v in serial.state_dict().items())
                   and all(torch.equal(got_m[k], v) for k, v in moments.items())
                   and dest["optim.step"].item() == 5.0)
    return out


def _check_world(env, cases, dropout=False, extra=(), shards_dir=None):
    losses = [_check_mode(env, *case) for case in cases]
    if shards_dir is not None:
        assert all(_reshard_check(env, shards_dir)), "resharded checkpoint differs"
    check = {"ckpt": _checkpointing_check, "amp": _amp_check, "regather": _regather_check}
    checks = {f"{kind} {mode}": check[kind](env, mode) for kind, mode in extra}
    return losses, (_dropout_check(env) if dropout else None), checks


@pytest.mark.parametrize("world, cases, dropout, extra", [
    (4, [("1d", 1), ("2d", 1), ("1d", 1, 2)], True,
     [("ckpt", "1d"), ("ckpt", "2d"), ("amp", "2d")]),
    (8, [("2p5d", 2), ("3d", 1), ("2d", 1, 4)], False,
     [("ckpt", "3d"), ("amp", "3d"), ("regather", "3d")]),
    (9, [("2d", 1, None, CFG_Q3), ("1d", 1, 3)], False, []),
])
def test_parallel_matches_serial(world, cases, dropout, extra, tmp_path):
    results = spawn(_check_world, world, cases, dropout, extra,
                    tmp_path if world == 8 else None, timeout_s=240)
    for per_rank in zip(*(losses for losses, _, _ in results)):  # the loss is the same everywhere
        assert max(per_rank) - min(per_rank) <= 1e-6 * abs(per_rank[0])
    for rank, (_, _, checks) in enumerate(results):
        for name, got in checks.items():
            if name.startswith(("ckpt", "regather")):
                assert got, f"rank {rank}: {name}: changed loss or gradients"
            else:
                bad = {k: v for k, v in got.items() if v > AMP_TOL}
                assert not bad, f"rank {rank}: {name}: bf16 errors above {AMP_TOL}: {bad}"
    if dropout:
        (a_train, a_eval), (b_train, b_eval) = results[0][1], results[1][1]
        assert not torch.equal(a_train, a_eval), "dropout had no effect"
        assert torch.equal(a_train, b_train)
        assert torch.equal(a_eval, b_eval)


def test_serial_model_runs_alone():
    """A grid of one (no process group) reproduces the serial model exactly."""
    serial = _serial_model()
    assert num_parameters(CFG) == sum(p.numel() for p in serial.parameters())
    idx = torch.randint(0, CFG.vocab_size, (4, CFG.seq_len))
    _, ls = serial(idx, idx)
    for mode in ("1d", "2d", "2p5d", "3d"):
        pmodel = parallelize(copy.deepcopy(serial), build_topology(mode))
        _, lp = pmodel(idx, idx)
        _assert_close(f"{mode} single", lp.detach(), ls.detach())


@pytest.mark.parametrize("mode, world, depth, cfg, batch, match", [
    ("2d", 4, 1, GPTConfig(hidden=30, heads=6), 4, "--hidden 30 must be a multiple of 4"),
    ("2d", 4, 1, GPTConfig(hidden=24, heads=3), 4, "--heads 3 must be a multiple of 2"),
    ("2p5d", 8, 2, GPTConfig(hidden=24, heads=4), 6, "--batch_size 6 must be a multiple of 4"),
    ("3d", 8, 1, GPTConfig(hidden=24, heads=4), 6, "--batch_size 6 must be a multiple of 4"),
    ("1d", 4, 1, GPTConfig(hidden=24, heads=6), 4, "--heads 6 must be a multiple of 4"),
])
def test_bad_shapes_fail_before_work(mode, world, depth, cfg, batch, match):
    topo = build_topology(mode, world_size=world, rank=0, depth=depth)
    with pytest.raises(ValueError, match=match):
        check_shapes(cfg, topo, batch)


@pytest.mark.parametrize("mode, world, depth, match", [
    ("2d", 8, 1, "square number of ranks; got 8"),
    ("2p5d", 8, 3, "for 8 ranks use --depth 2 \\(q=2\\)"),
    ("2p5d", 8, 1, "for 8 ranks use --depth 2 \\(q=2\\)"),
    ("2p5d", 12, 2, "for 12 ranks use --depth 3 \\(q=2\\)"),
    ("2p5d", 6, 1, "for 6 ranks use --depth 6 \\(q=1: no tensor split\\)"),
    ("3d", 4, 1, "cube number of ranks; got 4"),
])
def test_bad_world_sizes(mode, world, depth, match):
    with pytest.raises(TopologyError, match=match):
        build_grid(mode, depth, world_size=world, rank=0)


def test_data_parallel_grid_checks():
    """``--dp``: the tensor grid is world / dp; the global batch must split over the replicas
    and then over the grid's batch shards; a dp that does not divide the world is refused."""
    topo = build_grid("2d", 1, world_size=8, rank=5, dp=2)
    assert (topo.grid_size, topo.dp_size, topo.coords["data"]) == (4, 2, 1)
    check_shapes(GPTConfig(vocab_size=36, hidden=24, heads=4), topo, 8)
    with pytest.raises(ValueError, match="--batch_size 6 must be a multiple of 4"):
        check_shapes(GPTConfig(vocab_size=36, hidden=24, heads=4), topo, 6)
    with pytest.raises(TopologyError, match="--dp 3 does not divide the 8 ranks"):
        build_grid("1d", 1, world_size=8, rank=0, dp=3)
