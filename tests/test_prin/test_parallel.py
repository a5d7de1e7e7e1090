"""Data parallelism on 2 gloo processes against one process from the same weights: every
averaged gradient, the averaged BatchNorm statistics, and an evaluation whose per-shape lists are
gathered (each rank scores its own batches) equal to the serial evaluation."""
import dataclasses

import torch

from prin.config import Config
from prin.data import generated, make_batch, one_hot
from prin.models import create_model
from prin.parallel import average_buffers, grad_plans
from prin.train import evaluate
from shared.parallel.dist import spawn
from shared.parallel.topology import build_topology
from shared.train import sync_gradients

KW = dict(num_categories=11, num_parts=31, sprin_levels=(16, 4), sprin_width=0.25, sprin_k_scale=0.25)


def _setup(cache):
    torch.manual_seed(0)
    model = create_model("sprin", "seg", **KW)
    test = generated("test", 1, cache)
    batch = make_batch(test, torch.arange(4), 64, "nr", generator=torch.Generator().manual_seed(3))
    cfg = dataclasses.replace(Config(points=64, eval_batch_size=2), task="seg")
    return model, test, batch, cfg


def _loss(model, batch, rows):
    torch.manual_seed(100)                          # the same random dilation and FPS start
    logits = model(batch["points"][rows], one_hot(batch["labels"][rows], 11))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["parts"][rows].flatten())


def _worker(env, cache):
    group = build_topology("data")["data"]
    model, test, batch, cfg = _setup(cache)
    rows = slice(2 * group.rank, 2 * group.rank + 2)
    _loss(model, batch, rows).backward()
    sync, _ = grad_plans(model, group)
    sync_gradients(sync)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.add_(float(group.rank))          # ranks' statistics differ
    before = {n: b.clone() for n, b in model.named_buffers()}
    average_buffers(model, group)
    after = {n: b.clone() for n, b in model.named_buffers()}
    res = evaluate(model, test, cfg, torch.device("cpu"), group, group.rank, group.size)
    return grads, before, after, res


def test_data_parallel_step_and_evaluation_equal_one_process(tmp_path):
    cache = tmp_path / "cache"
    model, test, batch, cfg = _setup(cache)          # builds the cache before the children start
    results = spawn(_worker, 2, cache)
    for half in (slice(0, 2), slice(2, 4)):
        (_loss(model, batch, half) / 2).backward()
    for grads, *_ in results:
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)
    (_, b0, avg, _), (_, b1, avg1, _) = results
    for name in avg:                                 # floating buffers: the mean over the ranks
        if avg[name].is_floating_point():
            torch.testing.assert_close(avg[name], (b0[name] + b1[name]) / 2)
        assert torch.equal(avg[name], avg1[name])
    model.load_state_dict({**model.state_dict(), **avg})
    serial = evaluate(model, test, cfg, torch.device("cpu"))
    for *_, res in results:
        assert res["lists"]["ar"]["index"] == list(range(len(test)))
        for key in ("nr_inst_miou", "ar_inst_miou", "nr_cls_miou"):
            assert abs(res[key] - serial[key]) < 1e-12, key
