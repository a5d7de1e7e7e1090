"""MoE layer: vectorised dispatch/combine vs a token-by-token reference, capacity and drop order,
load-balancing loss, bad arguments, and expert parallelism (the plan of widenet.parallel and its
gradient plans) on 2 and 4 gloo ranks vs one process.

Tolerances (fp32): the reference and the vectorised layer do the same products in a different
order (per token vs batched matmul, one index_add vs a running sum), so results agree to a few
ulps of the largest term: rtol 1e-5, atol 1e-6 on O(1) values.
"""
import copy

import pytest
import torch

from shared.parallel.dist import spawn
from shared.parallel.plan import apply_plan
from shared.parallel.topology import Group, TopologyError, build_topology
from shared.train.gradients import global_grad_norm, sync_gradients
from widenet.models import MoE, create_model, expert_capacity, load_balance_loss
from widenet.models.moe import assign_slots
from widenet.parallel import ShardedExperts, expert_parallel, grad_plans, parallelize

TOL = dict(rtol=1e-5, atol=1e-6)


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token top-k MoE with capacity, slots given in token order (slow, obvious)."""
    tokens = x.reshape(-1, x.shape[-1])
    T, E, k = tokens.shape[0], moe.num_experts, moe.top_k
    C = expert_capacity(T, E, k, moe.capacity_factor)
    probs = torch.softmax(tokens @ moe.router.weight.t(), dim=-1)
    ex = moe.experts
    used = [0] * E
    rows = []
    for t in range(T):
        p, idx = probs[t].topk(k)
        y = torch.zeros_like(tokens[t])
        for j in range(k):
            e = int(idx[j])
            if used[e] < C:
                k_ = str(e)
                h = torch.nn.functional.gelu(tokens[t] @ ex.w1[k_] + ex.b1[k_])
                y = y + p[j] * torch.nn.functional.gelu(h @ ex.w2[k_] + ex.b2[k_])
            used[e] += 1
        rows.append(y)
    return torch.stack(rows).view_as(x)


def test_dispatch_combine_equals_reference_outputs_and_gradients():
    torch.manual_seed(0)
    moe = MoE(dim=13, hidden=11, num_experts=5, top_k=2, capacity_factor=0.9, dropout=0.0).eval()
    ref = copy.deepcopy(moe)
    x = torch.randn(3, 7, 13, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    y, stats = moe(x)
    y_ref = reference_moe(ref, xr)
    assert 0 < stats.dropped.item() < 1, "the test should exercise token dropping"
    torch.testing.assert_close(y, y_ref, **TOL)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    (y_ref * gy).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **TOL)
    for (name, p), p_ref in zip(moe.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, **TOL, msg=name)


def test_capacity_and_drop_order_follow_token_order():
    # 6 tokens, 3 experts, top-2, capacity 2: slots are given token by token over both choices
    top_idx = torch.tensor([[0, 1], [1, 0], [0, 2], [2, 0], [1, 2], [0, 1]])
    mask, position, keep = assign_slots(top_idx, 3, capacity=2)
    assert position.tolist() == [[0, 0], [1, 1], [2, 0], [1, 3], [2, 2], [4, 3]]
    assert keep.tolist() == [[True, True], [True, True], [False, True], [True, False],
                             [False, False], [False, False]]
    assert mask.sum(0).tolist() == [5, 4, 3]
    assert expert_capacity(197 * 8, 4, 2, 1.2) == int(197 * 8 * 1.2 * 2 / 4)


def test_overflowing_tokens_output_zero_and_later_tokens_drop_first():
    torch.manual_seed(1)
    moe = MoE(dim=8, hidden=6, num_experts=4, top_k=2, capacity_factor=0.5, dropout=0.0).eval()
    with torch.no_grad():  # every token prefers experts 0 then 1
        moe.router.weight.zero_()
        moe.router.weight[0, 0], moe.router.weight[1, 0] = 4.0, 2.0
    x = torch.randn(1, 10, 8)
    x[..., 0] = 1.0
    y, stats = moe(x)
    C = expert_capacity(10, 4, 2, 0.5)  # = 2
    assert C == 2
    assert torch.count_nonzero(y[0, :C].abs().sum(-1)) == C       # first C tokens are served
    assert torch.all(y[0, C:] == 0)                                 # the rest overflow: zero
    assert stats.dropped.item() == pytest.approx(1 - 2 * C / 20)


def test_load_balance_loss_is_one_at_perfect_balance_and_larger_when_skewed():
    T, E, k = 12, 4, 2
    probs = torch.full((T, E), 1 / E, requires_grad=True)
    balanced = torch.zeros(T, E)
    for t in range(T):
        balanced[t, t % E] = balanced[t, (t + 1) % E] = 1
    assert load_balance_loss(probs, balanced, k).item() == pytest.approx(1.0)
    skew_p = torch.tensor([[0.6, 0.3, 0.05, 0.05]]).repeat(T, 1)
    skew_m = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(T, 1)
    assert load_balance_loss(skew_p, skew_m, k).item() == pytest.approx(4 * (0.6 + 0.3) / 2)
    load_balance_loss(probs, balanced, k).backward()
    assert probs.grad is not None and torch.all(probs.grad > 0)


def test_router_noise_only_in_training_with_std_one_over_e():
    moe = MoE(dim=4, hidden=4, num_experts=8, top_k=2)
    assert moe.router.noise_std == pytest.approx(1 / 8)
    x = torch.randn(50, 4)
    moe.eval()
    assert torch.equal(moe.router(x)[0], moe.router(x)[0])
    moe.train()
    assert not torch.equal(moe.router(x)[0], moe.router(x)[0])


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="top_k=3 must be between 1 and the number of experts"):
        MoE(8, 8, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        MoE(8, 8, num_experts=4, capacity_factor=0.0)
    with pytest.raises(ValueError, match="unknown model 'widenet_xl'; valid models: .*widenet_b"):
        create_model("widenet_xl")
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        create_model("widenet_tiny", img_size=30)
    with pytest.raises(ValueError, match="k|top_k"):
        create_model("widenet_tiny", top_k=5)


# ---------------------------------------------------------------------------------------------
# expert parallelism

class _Holder(torch.nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.moe = moe


def _max_err(a, b):
    return (a - b).abs().max().item()


def _ep_worker(env, num_experts, grid):
    """Compare an expert-parallel MoE layer and a tiny WideNet with serial references.

    Every rank builds the same full weights (seeded) and the inputs of all ranks; the serial
    reference runs each rank's batch through the unsharded module and sums the losses, so after
    the gradient plans each rank's gradients must be the serial ones divided by the world size
    (the mean over ranks), and the global gradient norm that of those. Returns the largest
    deviations."""
    world = env.world_size
    topo = build_topology("expert", grid_size=grid)
    expert, data = topo["expert"], topo["data"]
    errs = {}

    # --- the MoE layer alone: odd sizes, drops happen
    torch.manual_seed(0)
    full = MoE(13, 11, num_experts, top_k=2, capacity_factor=1.0, noise_std=0.0, dropout=0.0)
    xs = torch.randn(world, 3, 7, 13)
    gys = torch.randn(world, 3, 7, 13)
    serial = copy.deepcopy(full)
    x_ref = xs.clone().requires_grad_(True)
    outs = [serial(x_ref[r]) for r in range(world)]
    sum(((y * gys[r]).sum() + 0.3 * s.aux_loss) for r, (y, s) in enumerate(outs)).backward()

    par = _Holder(copy.deepcopy(full))
    apply_plan(par, {"moe.experts": expert_parallel(expert)})
    x = xs[env.rank].clone().requires_grad_(True)
    y, stats = par.moe(x)
    ((y * gys[env.rank]).sum() + 0.3 * stats.aux_loss).backward()
    errs["out"] = _max_err(y, outs[env.rank][0])
    errs["aux"] = abs(stats.aux_loss.item() - outs[env.rank][1].aux_loss.item())
    errs["dx"] = _max_err(x.grad, x_ref.grad[env.rank])
    sync_gradients(grad_plans(par, expert, data)[0])
    local = par.moe.experts
    assert isinstance(local, ShardedExperts) and len(local.ids) == num_experts // grid
    assert local.ids[0] == expert.rank * (num_experts // grid)
    for name in ("w1", "b1", "w2", "b2"):
        for key, p in getattr(local, name).items():
            ref = getattr(serial.experts, name)[key].grad / world
            errs[f"d{name}.{key}"] = _max_err(p.grad, ref)
    errs["drouter"] = _max_err(par.moe.router.weight.grad, serial.router.weight.grad / world)
    errs["dropped"] = stats.dropped.item()

    # --- a tiny WideNet (shared attention + shared MoE over 3 blocks)
    torch.manual_seed(1)
    kw = dict(img_size=12, patch_size=4, num_classes=5, dim=15, depth=3, heads=3, mlp_dim=7,
              moe_dim=9, num_experts=num_experts, capacity_factor=1.1, noise_std=0.0, dropout=0.0)
    net = create_model("widenet_tiny", **kw)
    imgs = torch.randn(world, 2, 3, 12, 12)
    serial_net = copy.deepcopy(net)
    ref_out = [serial_net(imgs[r]) for r in range(world)]
    sum(o.logits.square().sum() + o.aux_loss for o in ref_out).backward()
    parallelize(net, expert)
    out = net(imgs[env.rank])
    (out.logits.square().sum() + out.aux_loss).backward()
    syncs, norms = grad_plans(net, expert, data)
    sync_gradients(syncs)
    errs["net_logits"] = _max_err(out.logits, ref_out[env.rank].logits)
    errs["net_aux"] = abs(out.aux_loss.item() - ref_out[env.rank].aux_loss.item())
    ref_params = dict(serial_net.named_parameters())     # the shards keep the serial names
    worst = 0.0
    for name, p in net.named_parameters():
        ref = ref_params[name].grad
        worst = max(worst, _max_err(p.grad, ref / world) / (ref.abs().max().item() / world + 1e-3))
    errs["net_grads_rel"] = worst
    serial_norm = torch.cat([p.grad.reshape(-1) / world for p in serial_net.parameters()]).norm()
    errs["net_norm_rel"] = abs(global_grad_norm(norms).item() / serial_norm.item() - 1)
    errs["shared_moe_once"] = len({id(b.ffn) for b in net.blocks})
    errs["local_experts"] = len(net.blocks[0].ffn.experts.ids)
    return errs


@pytest.mark.parametrize("world,num_experts,grid", [(2, 6, 2), (4, 4, 4), (4, 6, 2)])
def test_expert_parallel_matches_single_process(world, num_experts, grid):
    results = spawn(_ep_worker, world, num_experts, grid)
    for rank, errs in enumerate(results):
        assert errs["shared_moe_once"] == 1
        assert errs["local_experts"] == num_experts // grid
        for key, value in errs.items():
            if key in ("dropped", "shared_moe_once", "local_experts"):
                continue
            assert value < 1e-5, f"rank {rank} of {world}: {key} differs by {value}"
    assert any(e["dropped"] > 0 for e in results), "capacity should drop some tokens here"


def test_expert_parallel_rejects_indivisible_experts():
    moe = MoE(8, 8, num_experts=4)
    with pytest.raises(TopologyError, match="4 experts cannot be split evenly over 3"):
        ShardedExperts(moe.experts, Group("g", (0, 1, 2), 0))
