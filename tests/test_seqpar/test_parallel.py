"""Ring Self-Attention, the memory-lean mode and sequence-parallel BERT vs serial references.

One spawn per world size (2 and 4 gloo ranks) runs every check and returns relative errors;
the tests below assert on them. Sizes are odd (3 heads of dim 7, 5 tokens per rank, batch 3,
vocabulary 19) so that transposed or mis-sliced blocks cannot pass by symmetry.

Tolerance: 1e-5 relative (max |ours − reference| / max |reference| per tensor), float32.
Both sides compute the same sums in a different blocking order (per-block matmuls, a ring of
partial sums, an online softmax merge); over at most 20 keys and 2 layers that moves results
by a few float32 ulps (observed ≤ 1e-6). Every bug this guards against (a 1/N or 1/√H factor,
a wrong block origin, a missing mask, a gradient not summed) gives errors of order 0.1–1.
"""
import pytest
import torch

from shared.errors import UsageError

from shared.parallel.comm import CommMeter
from shared.parallel.dist import spawn
from shared.parallel.plan import apply_plan
from shared.parallel.topology import Group, build_topology, single_group
from shared.train import global_grad_norm, reduce_metrics, sync_gradients

from seqpar import parallel_rsa as rsa
from seqpar.models.bert import BertConfig, BertMLM, dense_attention, mlm_loss_terms
from seqpar.parallel import SequenceParallelBert, mlm_loss, sequence_parallel_plan
from seqpar.parallel_rsa import check_sequence_split, ring_self_attention
from seqpar.parallel_tp1d import TensorParallelBert

TOL = 1e-5
B, Z, A, C = 3, 3, 7, 5          # batch, heads, head dim, tokens per rank


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def padding_mask(b: int, length: int, c: int) -> torch.Tensor:
    """Sample 0: no padding; 1: padded from the middle of the second block; 2: last block gone."""
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, c + 2:] = False
    mask[2, length - c:] = False
    return mask


# ----------------------------------------------------------------------------------------------
# attention


def attention_errors(group, lean: bool, overlap: bool, masked: bool) -> dict:
    n, r = group.size, group.rank
    length = C * n
    gen = torch.Generator().manual_seed(1)
    q, k, v, d_out = (torch.randn(B, Z, length, A, generator=gen) for _ in range(4))
    mask = padding_mask(B, length, C) if masked else None
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = dense_attention(*full, mask)
    (ref * d_out).sum().backward()
    rows = slice(r * C, (r + 1) * C)
    loc = [t[:, :, rows].clone().requires_grad_() for t in (q, k, v)]
    out = ring_self_attention(*loc, group, mask, lean=lean, overlap=overlap)
    (out * d_out[:, :, rows]).sum().backward()
    return {"out": rel(out, ref[:, :, rows]),
            **{f"d{name}": rel(l.grad, f.grad[:, :, rows])
               for name, l, f in zip("qkv", loc, full)}}


def attention_sent_blocks(group, lean: bool) -> tuple[float, float]:
    """Elements each rank sends in one forward and one backward, in blocks of B·Z·c·A."""
    q, k, v = (torch.randn(B, Z, C, A, requires_grad=True) for _ in range(3))
    with CommMeter() as fwd:
        out = ring_self_attention(q, k, v, group, lean=lean)
    with CommMeter() as bwd:
        out.sum().backward()
    block = B * Z * C * A * 4
    return fwd.sent_bytes / block, bwd.sent_bytes / block


def attention_dropout_runs(group, lean: bool) -> dict:
    """Two runs with the same seed (must agree exactly) and one without dropout."""
    length = C * group.size
    gen = torch.Generator().manual_seed(2 + group.rank)
    q, k, v = (torch.randn(B, Z, C, A, generator=gen) for _ in range(3))
    results = []
    for p in (0.3, 0.3, 0.0):
        torch.manual_seed(123 + group.rank)
        loc = [t.clone().requires_grad_() for t in (q, k, v)]
        out = ring_self_attention(*loc, group, padding_mask(B, length, C), dropout_p=p, lean=lean)
        out.square().sum().backward()
        results.append([out.detach()] + [t.grad for t in loc])
    same = max((a - b).abs().max().item() for a, b in zip(results[0], results[1]))
    differs = min((a - b).abs().max().item() for a, b in zip(results[0], results[2]))
    return {"same_seed_diff": same, "dropout_effect": differs}


# ----------------------------------------------------------------------------------------------
# BERT

def tiny_bert(dropout: float = 0.0) -> BertMLM:
    torch.manual_seed(0)
    return BertMLM(BertConfig(vocab_size=19, hidden=Z * A, heads=Z, layers=2, ffn=29,
                              max_len=64, dropout=dropout, attn_dropout=dropout))


def bert_batch(batch: int, length: int, c: int):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 19, (batch, length), generator=gen)
    mask = padding_mask(batch, length, c) if batch == 3 else torch.cat(
        [padding_mask(3, length, c), padding_mask(3, length, c).roll(1, 0)])
    target = (torch.rand(batch, length, generator=gen) < 0.4) & mask
    labels = torch.where(target, ids, torch.full_like(ids, -100))
    return ids, mask, labels


def sp_step(sp: SequenceParallelBert, ids, mask, labels):
    """One training step as the core runs it on a global batch: this replica's rows, this rank's
    chunk, the loss over the global count of masked tokens, the gradient plan executed.
    Returns (local logits, the reported global mean loss, the global gradient norm)."""
    count = int((labels != -100).sum())
    ids, mask, labels = (sp.local_rows(t) for t in (ids, mask, labels))
    logits = sp(sp.local_chunk(ids), mask)
    loss, pair = mlm_loss(logits, sp.local_chunk(labels), count)
    loss.backward()
    sync_plan, norm_plan = sp.grad_plans()
    sync_gradients(sync_plan)
    reported = reduce_metrics({"loss": pair}, [sp.seq, sp.data], "cpu")["loss"]
    return logits, torch.tensor(reported), global_grad_norm(norm_plan)


def bert_errors(seq_size: int, lean: bool) -> dict:
    topo = build_topology("seq", grid_size=seq_size)
    seq, data = topo["seq"], topo["data"]
    length = C * seq_size
    per_replica = B
    ids, mask, labels = bert_batch(per_replica * topo.dp_size, length, C)
    # serial reference on the global batch
    serial = tiny_bert()
    logits_ref = serial(ids, mask)
    loss_sum, count = mlm_loss_terms(logits_ref, labels)
    loss_ref = loss_sum / count
    loss_ref.backward()
    norm_ref = torch.cat([p.grad.reshape(-1) for p in serial.parameters()]).norm()
    # ours: this replica's samples, this rank's chunk
    sp = SequenceParallelBert(tiny_bert(), topo, lean=lean)
    logits, reported, norm = sp_step(sp, ids, mask, labels)
    samples = slice(data.rank * per_replica, (data.rank + 1) * per_replica)
    cols = slice(seq.rank * C, (seq.rank + 1) * C)
    errors = {"logits": rel(logits, logits_ref[samples, cols]), "loss": rel(reported, loss_ref),
              "grad norm": rel(norm, norm_ref)}
    ref_params = dict(serial.named_parameters())
    for name, p in sp.model.named_parameters():
        errors[f"grad {name}"] = rel(p.grad, ref_params[name].grad)
    return errors


def bert_dropout_runs(seq_size: int, lean: bool) -> dict:
    """Dropout masks come from (seed, step, rank): the same step twice draws the same masks,
    another step other masks, and dropout changes the result."""
    topo = build_topology("seq", grid_size=seq_size)
    ids, mask, labels = bert_batch(B, C * seq_size, C)
    losses, grads = [], []
    for dropout, step in ((0.2, 3), (0.2, 3), (0.2, 4), (0.0, 3)):
        sp = SequenceParallelBert(tiny_bert(dropout), topo, lean=lean, seed=7)
        torch.manual_seed(100 + step)          # the global RNG must not matter
        sp.reseed(step)
        _, reported, _ = sp_step(sp, ids, mask, labels)
        losses.append(reported.item())
        grads.append(torch.cat([p.grad.reshape(-1) for p in sp.model.parameters()]))
    same = max(abs(losses[0] - losses[1]), (grads[0] - grads[1]).abs().max().item())
    return {"same_seed_diff": same,
            "other_step_diff": (grads[0] - grads[2]).abs().max().item(),
            "dropout_effect": abs(losses[0] - losses[3])}


def tp_baseline_errors() -> dict:
    """The Megatron 1D baseline of reproduce.py computes the same model (dropout off)."""
    topo = build_topology("1d")
    torch.manual_seed(0)
    serial = BertMLM(BertConfig(vocab_size=20, hidden=14, heads=2, layers=2, ffn=30, max_len=64,
                                dropout=0.0, attn_dropout=0.0))
    ids, mask, labels = bert_batch(B, 10, 5)
    ids = ids % 20
    tp = TensorParallelBert(serial, topo)
    logits_ref = serial(ids, mask)
    loss_sum, count = mlm_loss_terms(logits_ref, labels)
    logits = tp(ids, mask)
    v = logits.shape[-1]
    r = topo["tensor"].rank
    return {"logits": rel(logits, logits_ref[..., r * v:(r + 1) * v]),
            "loss": rel(tp.loss(logits, labels), loss_sum / count)}


def bad_input_messages(group) -> dict:
    """The error raised for each bad input, before any communication."""
    topo = build_topology("seq")
    sp = SequenceParallelBert(tiny_bert(), topo)
    n = group.size
    cases = {
        "indivisible": lambda: sp.local_chunk(torch.zeros(2, C * n + 1, dtype=torch.long)),
        "too_many_ranks": lambda: check_sequence_split(n - 1, n),
        "mask_shape": lambda: sp(torch.zeros(2, C, dtype=torch.long),
                                 torch.ones(2, C * n + 1, dtype=torch.bool)),
        "attention_mask_shape": lambda: ring_self_attention(
            *(torch.zeros(2, Z, C, A) for _ in range(3)), group,
            torch.ones(2, C, dtype=torch.bool)),
    }
    out = {}
    for name, fn in cases.items():
        try:
            fn()
            out[name] = None
        except UsageError as exc:
            out[name] = str(exc)
    return out


# ----------------------------------------------------------------------------------------------
# one spawn per world size


def run_all(env, grids):
    rsa.LEAN_TILE = 2            # lean mode: blocks of 5 keys in tiles of 2, 2, 1
    torch.manual_seed(0)
    group = build_topology("seq")["seq"]
    res = {"attention": {}, "attention_dropout": {}, "bert": {}, "bert_dropout": {}}
    for lean in (False, True):
        for overlap in (True, False):
            for masked in (True, False):
                res["attention"][(lean, overlap, masked)] = attention_errors(
                    group, lean, overlap, masked)
        res["attention_dropout"][lean] = attention_dropout_runs(group, lean)
        res.setdefault("sent", {})[lean] = attention_sent_blocks(group, lean)
        for seq_size in grids:
            res["bert"][(seq_size, lean)] = bert_errors(seq_size, lean)
        res["bert_dropout"][lean] = bert_dropout_runs(env.world_size, lean)
    res["bad_input"] = bad_input_messages(group)
    if env.world_size == 2:
        res["tp"] = tp_baseline_errors()
    return res


@pytest.fixture(scope="module")
def results():
    return {2: spawn(run_all, 2, (2,)), 4: spawn(run_all, 4, (4, 2))}


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("lean", [False, True], ids=["rsa", "lean"])
def test_attention_matches_dense(results, world, lean):
    for overlap in (True, False):
        for masked in (True, False):
            key = (lean, overlap, masked)
            worst = {n: max(r["attention"][key][n] for r in results[world])
                     for n in ("out", "dq", "dk", "dv")}
            assert max(worst.values()) < TOL, (key, worst)


def test_single_rank_matches_dense(monkeypatch):
    monkeypatch.setattr(rsa, "LEAN_TILE", 3)
    group = single_group()
    for lean in (False, True):
        errors = attention_errors(group, lean, True, True)
        assert max(errors.values()) < TOL, (lean, errors)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("lean", [False, True], ids=["rsa", "lean"])
def test_attention_dropout_reproducible(results, world, lean):
    for r in results[world]:
        d = r["attention_dropout"][lean]
        assert d["same_seed_diff"] == 0.0
        assert d["dropout_effect"] > 1e-3


@pytest.mark.parametrize("world,seq_size", [(2, 2), (4, 4), (4, 2)],
                         ids=["seq2", "seq4", "seq2xdata2"])
@pytest.mark.parametrize("lean", [False, True], ids=["rsa", "lean"])
def test_bert_matches_serial(results, world, seq_size, lean):
    for rank, r in enumerate(results[world]):
        errors = r["bert"][(seq_size, lean)]
        assert len([k for k in errors if k.startswith("grad ")]) >= 20  # every parameter checked
        bad = {k: v for k, v in errors.items() if not v < TOL}
        assert not bad, (rank, bad)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("lean", [False, True], ids=["rsa", "lean"])
def test_bert_dropout_reproducible(results, world, lean):
    for r in results[world]:
        d = r["bert_dropout"][lean]
        assert d["same_seed_diff"] == 0.0
        assert d["other_step_diff"] > 1e-6
        assert d["dropout_effect"] > 1e-4


def test_bad_input_errors(results):
    for world in (2, 4):
        msgs = results[world][0]["bad_input"]
        assert "not divisible by the" in msgs["indivisible"] and "pad or cut" in msgs["indivisible"]
        assert "needs at least" in msgs["too_many_ranks"]
        assert "key mask" in msgs["mask_shape"] and "full sequence" in msgs["mask_shape"]
        assert "key mask" in msgs["attention_mask_shape"]


def test_tp_baseline_matches_serial(results):
    for r in results[2]:
        assert max(r["tp"].values()) < TOL, r["tp"]


@pytest.mark.parametrize("world", [2, 4])
def test_communication_volume(results, world):
    """Per rank, in blocks of B·Z·(L/N)·A. RSA: forward 2(N−1) (K and V rings); backward
    2(N−1) for the two ring passes + 2(N−1) for the two reduce-scatters of [B, Z, L, A]:
    6(N−1) in all, where the paper's all-reduces give 8(N−1). Lean: K and V travel together
    (2(N−1) forward, 2(N−1) backward) and the dK/dV accumulators make N hops (2N)."""
    n = world
    for r in results[world]:
        assert r["sent"][False] == (2 * (n - 1), 4 * (n - 1))
        assert r["sent"][True] == (2 * (n - 1), 2 * (n - 1) + 2 * n)


def test_plan_is_keyed_by_module_name():
    """The plan names the embedding and every attention layer; it changes them in place, so the
    parameters and the state dict stay the serial model's."""
    group = Group("seq", (0, 1), 1)                   # rank 1 of 2; no communication here
    plan = sequence_parallel_plan(group)
    assert set(plan) == {"embed", "layers.*.attn"}
    serial, model = tiny_bert(), tiny_bert()
    apply_plan(model, plan)
    assert all(layer.attn.core is not dense_attention for layer in model.layers)
    assert all(layer.attn.core is dense_attention for layer in serial.layers)
    ref, ours = serial.state_dict(), model.state_dict()
    assert list(ref) == list(ours) and all(torch.equal(ref[k], ours[k]) for k in ref)
    # the chunk of rank 1 embeds absolute positions c..2c-1
    ids = torch.randint(0, 19, (2, C))
    expected = serial.embed.word(ids) + serial.embed.position(torch.arange(C, 2 * C))[None]
    assert torch.equal(model.embed(ids, torch.arange(C)), expected)
    small = BertMLM(BertConfig(vocab_size=19, hidden=Z * A, heads=Z, layers=1, ffn=29,
                               max_len=C + 2))
    apply_plan(small, sequence_parallel_plan(group))
    with pytest.raises(UsageError, match="exceeds the model's max_len"):
        small.embed(ids, torch.arange(C))
    # applying the plan again (e.g. a second wrapper) does not shift the positions twice
    apply_plan(model, plan)
    assert torch.equal(model.embed(ids, torch.arange(C)), expected)
