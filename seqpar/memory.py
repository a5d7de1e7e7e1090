"""Exact activation memory (bytes saved for backward) and peak memory of one training step.

:class:`shared.bench.SavedTensorBytes` counts, through ``torch.autograd.graph.saved_tensors_hooks``, every tensor
that autograd keeps for the backward pass, once per storage (views of one tensor count once),
leaving out the parameters themselves. That is the activation memory of the step, exactly, on
any device. Peak memory comes from :class:`shared.bench.PeakMemory` (the CUDA allocator's peak
on a GPU, the growth of the process's resident set on CPU).

:func:`measure_step` runs one forward + backward of RSA, the memory-lean mode or 1D tensor
parallelism on a random MLM batch and returns those numbers for this rank.
"""
from __future__ import annotations

import torch

from shared.bench import PeakMemory, SavedTensorBytes, Timer
from shared.errors import UsageError
from shared.parallel.topology import Topology

from .models.bert import BertConfig, BertMLM
from .parallel import SequenceParallelBert, mlm_loss
from .parallel_tp1d import TensorParallelBert

METHODS = ("rsa", "lean", "tp")


def build(method: str, bert: BertConfig, topo: Topology, seed: int = 0, overlap: bool = True):
    """The model of ``method`` from the serial BERT of ``seed``: (module, local parameter count)."""
    torch.manual_seed(seed)
    serial = BertMLM(bert)
    if method == "tp":
        model = TensorParallelBert(serial, topo, seed)
    elif method in ("rsa", "lean"):
        model = SequenceParallelBert(serial, topo, lean=method == "lean", overlap=overlap,
                                     seed=seed)
    else:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return model, sum(p.numel() for p in model.parameters())


def random_batch(batch: int, length: int, vocab: int, seed: int = 0):
    """Token ids, a full key mask and ~15 % MLM targets (identical on every rank)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    labels = torch.where(torch.rand(batch, length, generator=gen) < 0.15, ids,
                         torch.full_like(ids, -100))
    return ids, torch.ones(batch, length, dtype=torch.bool), labels


def step_loss(method: str, model, ids, mask, labels):
    if method == "tp":
        return model.loss(model(ids, mask), labels)
    loss, _ = mlm_loss(model(model.local_chunk(ids), mask), model.local_chunk(labels),
                       int((labels != -100).sum()))
    return loss


def measure_step(method: str, model, batch: int, length: int, vocab: int,
                 device="cpu") -> dict:
    """Saved-for-backward bytes, peak memory growth and time of one training step on this rank."""
    ids, mask, labels = (t.to(device) for t in random_batch(batch, length, vocab))
    model.train()
    model.zero_grad(set_to_none=True)
    with Timer(device) as timer, PeakMemory(device) as peak:
        with SavedTensorBytes(model.parameters()) as saved:
            loss = step_loss(method, model, ids, mask, labels)
        loss.backward()
    return {"saved_bytes": saved.bytes, "peak_bytes": peak.delta_bytes, "seconds": timer.seconds}
