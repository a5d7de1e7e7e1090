"""Data parallelism on 2 gloo processes against the serial model from the same weights: the
sample counts (global batch mean), the loss, and every averaged gradient; BatchNorm buffers
broadcast from rank 0; and a whole training run of 2 ranks whose replicas stay identical."""
import torch

from shared.parallel.dist import spawn
from shared.parallel.topology import build_topology
from shared.train import fit, load_checkpoint, parse_args, read_metrics, start, sync_gradients
from skeleton_merger.config import PRESETS, Config
from skeleton_merger.loss import composite_chamfer, offset_regularizer
from skeleton_merger.models import SkeletonMerger
from skeleton_merger.parallel import DataParallelDecoder, broadcast_buffers, grad_plans, parallelize
from skeleton_merger.train import SkeletonMergerTask

KW = dict(npoints=(40, 16, 8, 4), width=0.25, dropout=0.0)
RUN = ["--num_points", "100", "--npoints", "40,16,8,4", "--radius_scale", "4", "--width", "0.25",
       "--train_shapes", "16", "--val_shapes", "6", "--batch_size", "4", "--steps", "3",
       "--log_every", "1", "--quiet", "--pictures", "0", "--category", "car"]


def _model():
    torch.manual_seed(0)
    return SkeletonMerger(4, **KW)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 73, 3, generator=g) * 2 - 1          # 3 shapes per rank


def _loss(model, x, counts=None):
    out = model(x, counts)
    loss = composite_chamfer(x, out.samples, out.counts, out.strengths) + \
        offset_regularizer(out.offsets)
    return loss, out


def _worker(env, out_dir):
    topo = build_topology("data")
    group = topo["data"]
    model = parallelize(_model(), group)
    assert isinstance(model.decoder, DataParallelDecoder)
    x = _batch().chunk(2)[group.rank]
    torch.manual_seed(100 + group.rank)                      # farthest-point-sampling starts
    loss, out = _loss(model, x)
    loss.backward()
    sync, _ = grad_plans(model, group)
    sync_gradients(sync)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    running = {n: b.clone() for n, b in model.named_buffers()}
    broadcast_buffers(model, group)
    after = {n: b.clone() for n, b in model.named_buffers()}
    # a whole data-parallel run on the training core
    cfg = parse_args(Config, PRESETS, RUN + ["--out_dir", out_dir, "--run", "dp2"],
                     paper="skeleton_merger")
    task = SkeletonMergerTask(cfg, start(cfg))
    summary = fit(cfg, task)
    state = {n: t.clone() for n, t in task.model.state_dict().items()}
    return loss.detach(), out.counts, grads, running, after, summary, state


def test_data_parallel_step_equals_the_serial_model(tmp_path):
    results = spawn(_worker, 2, str(tmp_path))
    # serial replay: each rank's half with its own BatchNorm statistics and FPS starts, and the
    # sample counts of the global batch. One thread, as the spawned ranks: at initialisation the
    # keypoints nearly coincide, so the CCD sorts nearly tied distances, and the rounding of
    # another matmul blocking (thread count) reorders ties and moves gradients by a few percent
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_serial(results)
    finally:
        torch.set_num_threads(threads)
    _check_run(results, tmp_path)


def _check_serial(results):
    model = _model()
    halves = _batch().chunk(2)
    lengths = []
    for r, x in enumerate(halves):
        torch.manual_seed(100 + r)
        with torch.no_grad():
            lengths.append(model.decoder.mean_lengths(model(x).keypoints))
    counts = torch.floor(torch.stack(lengths).mean(0) / 0.01).clamp(15, 200).long()
    model = _model()
    losses = []
    for r, x in enumerate(halves):
        torch.manual_seed(100 + r)
        loss, out = _loss(model, x, counts)
        (loss / 2).backward()                                # the mean over the 2 ranks
        losses.append(loss.detach())
        assert torch.equal(results[r][1], counts)
        torch.testing.assert_close(results[r][0], losses[-1], rtol=1e-6, atol=1e-7)
    # every gradient: the serial mean of the two halves (fp32; the all-reduce sums in another
    # order than two backward passes accumulating into .grad: ~1e-7 relative)
    for name, p in model.named_parameters():
        for r in range(2):
            torch.testing.assert_close(results[r][2][name], p.grad, rtol=1e-5, atol=1e-7,
                                       msg=f"rank {r}: {name}")
    assert any(results[0][2][n].abs().sum() > 0 for n in results[0][2] if "encoder.sa.0" in n)
    # BatchNorm running statistics differ after the step and are rank 0's after the broadcast
    (_, _, _, run0, after0, *_), (_, _, _, run1, after1, *_) = results
    assert any(not torch.equal(run0[n], run1[n]) for n in run0 if "running_mean" in n)
    assert all(torch.equal(after0[n], run0[n]) and torch.equal(after1[n], run0[n]) for n in run0)


def _check_run(results, tmp_path):
    """Both ranks of the data-parallel run end with identical weights and buffers (the same
    checkpoint) and the same evaluation; the loss is logged every step."""
    (*_, s0, w0), (*_, s1, w1) = results
    assert s0["step"] == s1["step"] == 3 and s0["das"] == s1["das"]
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    saved = load_checkpoint(tmp_path / "dp2" / "checkpoint.pt")
    assert saved["world_size"] == 2
    assert all(torch.equal(saved["task"]["model"][n], w0[n]) for n in w0)
    assert [r["step"] for r in read_metrics(tmp_path / "dp2" / "metrics.jsonl")
            if "loss" in r] == [1, 2, 3]
