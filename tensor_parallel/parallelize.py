"""Build the 1D / 2D / 2.5D / 3D parallel GPT from a serial GPT's weights, and gather it back.

    topo = build_topology("2d")                    # or "1d", "2p5d" (depth=d), "3d"
    pmodel = parallelize(serial_gpt, topo)         # every rank passes the same full model
    local_logits, loss = pmodel(idx, targets)      # idx/targets: the full global batch
    serial_state_dict(pmodel)                      # == the serial state dict (gathered)

The forward is the same for every mode (:class:`ParallelBlock`); a mode's *plan* supplies the
layers, the batch split and the loss reduction:

=====  =====================================  ==================  ==========================
mode   activation on a rank                    batch split over    loss averaged over
=====  =====================================  ==================  ==========================
1d     [b, s, h] replicated (heads split)      —                   —
2d     [b/q, s, h/q]                            col (q)             col
2p5d   [b/(dq), s, h/q]                         xz (d·q)            xz
3d     [b/q², s, h/q]                           weight, input (q²)  output_x_weight (q²)
=====  =====================================  ==================  ==========================

The LM head is a parallel Linear whose logits stay split along the vocabulary; the loss is the
vocabulary-parallel cross-entropy of :mod:`shared.parallel.tp1d` over the group holding the other
vocabulary chunks of the same rows (1d: tensor; 2d/2p5d: row; 3d: input).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.parallel.comm import raw_all_gather, raw_all_reduce, reduce_from_group
from shared.parallel.tp1d import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                         parallel_dropout, vocab_parallel_cross_entropy)

from .layers_2d import Embedding2D, Grid2D, LayerNorm2D, Linear2D
from .layers_3d import Embedding3D, Groups3D, LayerNorm3D, Linear3D
from .models.gpt import GPT, GPTConfig, attention_core

MODES = ("1d", "2d", "2p5d", "3d")


# ----------------------------------------------------------------------------------------------
# shape constraints, checked before any work

def batch_shards(topo) -> int:
    """Number of pieces the global batch is cut into."""
    q = topo.shape.get("q", 1)
    return {"1d": 1, "2d": q, "2p5d": q * topo.shape.get("d", 1), "3d": q * q}[topo.mode]


def check_shapes(cfg: GPTConfig, topo, batch_size: int | None = None) -> None:
    """Raise one ValueError listing every size the mode cannot split, with a valid alternative."""
    mode = topo.mode
    if mode not in MODES:
        raise ValueError(f"unknown tensor-parallel mode {mode!r}; choose one of {', '.join(MODES)}")
    q = topo.shape.get("q", 1)
    p = topo.grid_size
    if mode == "1d":        # heads and vocabulary split P ways
        needs = [("heads", cfg.heads, p), ("hidden", cfg.hidden, p),
                 ("vocab_size", cfg.vocab_size, p)]
    else:                   # heads/vocabulary split q ways; biases, LayerNorm, embeddings q² ways
        needs = [("heads", cfg.heads, q), ("hidden", cfg.hidden, q * q),
                 ("vocab_size", cfg.vocab_size, q)]
    if batch_size is not None:
        needs.append(("batch_size", batch_size, batch_shards(topo)))
    bad = [f"{name}={value} must be divisible by {m} (e.g. {value + (-value) % m})"
           for name, value, m in needs if value % m]
    if bad:
        raise ValueError(f"{mode} tensor parallelism on {p} ranks "
                         f"({', '.join(f'{k}={v}' for k, v in topo.shape.items())}) cannot split "
                         f"this model: " + "; ".join(bad))


# ----------------------------------------------------------------------------------------------
# plans: the layers of each mode

class _Replicated(nn.Module):
    """A serial module held whole on every rank (1D LayerNorm and position embedding)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(module)

    def forward(self, x):
        return self.inner(x)

    def serial_state(self, pick=None) -> dict:
        pick = pick or (lambda p: p)
        return {k: pick(p).detach() for k, p in self.inner.named_parameters()}


class _Wrap1D(nn.Module):
    """A shared.parallel.tp1d layer plus the gather of its values or gradients to the serial layout."""

    def __init__(self, layer: nn.Module, dims: dict):
        super().__init__()
        self.layer, self.dims = layer, dims

    def forward(self, x):
        return self.layer(x)

    def serial_state(self, pick=None) -> dict:
        pick = pick or (lambda p: p)
        out = {}
        for name, p in self.layer.named_parameters():
            t = pick(p).detach()
            dim = self.dims.get(name)
            out[name] = t if dim is None else raw_all_gather(t, dim, self.layer.group)
        return out


class Plan1D:
    """Megatron: qkv/fc1/head column-parallel, proj/fc2 row-parallel, vocab-parallel embedding."""
    resid_kind = "replicated"

    def __init__(self, topo):
        self.topo, self.g = topo, topo["tensor"]
        self.vocab_group = self.g

    def linear(self, lin: nn.Linear, role: str):
        if role == "col":
            return _Wrap1D(ColumnParallelLinear.from_serial(lin, self.g), {"weight": 0, "bias": 0})
        return _Wrap1D(RowParallelLinear.from_serial(lin, self.g), {"weight": 1})

    def layernorm(self, ln):
        return _Replicated(ln)

    def tok_embedding(self, emb):
        return _Wrap1D(VocabParallelEmbedding.from_serial(emb, self.g), {"weight": 0})

    def pos_embedding(self, emb):
        return _Replicated(emb)

    def split_batch(self, t):
        return t

    def shard_activation(self, x):
        """The full residual-stream activation [B, T, h] → this rank's piece."""
        return x

    def reduce_loss(self, local_mean):
        return local_mean

    def local_heads(self, heads):
        return heads // self.g.size


class Plan2D:
    """Optimus 2D (``depth`` 1) and Tesseract 2.5D (paper version: batch over d·q)."""
    resid_kind = "sharded"

    def __init__(self, topo):
        self.topo = topo
        dep = topo["dep"] if topo.mode == "2p5d" else None
        self.grid = Grid2D(topo["row"], topo["col"], dep)
        self.batch_group = topo["xz"] if topo.mode == "2p5d" else topo["col"]
        self.vocab_group = topo["row"]

    def linear(self, lin, role):
        return Linear2D(lin, self.grid, self.topo.mode)

    def layernorm(self, ln):
        return LayerNorm2D(ln, self.grid, self.topo.mode)

    def tok_embedding(self, emb):
        return Embedding2D(emb, self.grid, self.topo.mode)

    pos_embedding = tok_embedding

    def split_batch(self, t):
        g = self.batch_group
        n = t.shape[0] // g.size
        return t[g.rank * n:(g.rank + 1) * n]

    def shard_activation(self, x):
        h = x.shape[-1] // self.grid.q
        return self.split_batch(x)[..., self.grid.c * h:(self.grid.c + 1) * h]

    def reduce_loss(self, local_mean):
        g = self.batch_group
        return reduce_from_group(local_mean / g.size, g)

    def local_heads(self, heads):
        return heads // self.grid.q


class Plan3D:
    """3D: Linear3D pairs with swapped input/output groups."""
    resid_kind = "sharded"

    def __init__(self, topo):
        self.topo = topo
        self.orig = Groups3D.from_topology(topo)
        self.vocab_group = topo["input"]
        self.loss_group = topo["output_x_weight"]

    def linear(self, lin, role):
        # "col": first Linear of a pair (qkv, fc1, head) on the original groups;
        # "row": the second (proj, fc2) with input and output swapped
        return Linear3D(lin, self.orig if role == "col" else self.orig.swapped(self.topo))

    def layernorm(self, ln):
        return LayerNorm3D(ln, self.topo)

    def tok_embedding(self, emb):
        return Embedding3D(emb, self.topo)

    pos_embedding = tok_embedding

    def split_batch(self, t):
        q = self.orig.q
        n = t.shape[0] // (q * q)
        b = self.topo["weight"].rank * q + self.topo["input"].rank
        return t[b * n:(b + 1) * n]

    def shard_activation(self, x):
        h = x.shape[-1] // self.orig.q
        k = self.topo["output"].rank
        return self.split_batch(x)[..., k * h:(k + 1) * h]

    def split_targets(self, t):
        """Rows of the logits: block ``weight·q + output`` (after the head's reduce-scatter)."""
        q = self.orig.q
        n = t.shape[0] // (q * q)
        b = self.topo["weight"].rank * q + self.topo["output"].rank
        return t[b * n:(b + 1) * n]

    def reduce_loss(self, local_mean):
        g = self.loss_group
        return reduce_from_group(local_mean / g.size, g)

    def local_heads(self, heads):
        return heads // self.orig.q


PLANS = {"1d": Plan1D, "2d": Plan2D, "2p5d": Plan2D, "3d": Plan3D}


# ----------------------------------------------------------------------------------------------
# the parallel model (same forward for every mode)

class ParallelBlock(nn.Module):
    """A pre-LN transformer block of any mode: x + proj(attn(qkv(ln1 x))), then
    x + fc2(gelu(fc1(ln2 x))), on the mode's local activation piece."""

    def __init__(self, block, plan, cfg: GPTConfig, streams=None):
        super().__init__()
        self.ln1 = plan.layernorm(block.ln1)
        self.qkv = plan.linear(block.attn.qkv, "col")
        self.proj = plan.linear(block.attn.proj, "row")
        self.ln2 = plan.layernorm(block.ln2)
        self.fc1 = plan.linear(block.mlp.fc1, "col")
        self.fc2 = plan.linear(block.mlp.fc2, "row")
        self.heads = plan.local_heads(cfg.heads)
        self.p, self.resid_kind, self.streams = cfg.dropout, plan.resid_kind, streams

    def _drop(self, x, kind):
        return parallel_dropout(x, self.p, self.training, self.streams, kind)

    def _attention(self, qkv):
        if not (self.training and self.p > 0 and self.streams is not None):
            return attention_core(qkv, self.heads, self.p, self.training)
        with self.streams.fork("sharded"):          # heads differ per rank in every mode
            return attention_core(qkv, self.heads, self.p, self.training)

    def forward(self, x):                            # x: the mode's local activation
        a = self._attention(self.qkv(self.ln1(x)))
        x = x + self._drop(self.proj(a), self.resid_kind)
        m = self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x + self._drop(m, self.resid_kind)


class ParallelGPT(nn.Module):
    """The parallel version of :class:`tensor_parallel.models.GPT` on one rank."""

    def __init__(self, serial: GPT, topo, streams=None):
        super().__init__()
        cfg = serial.cfg
        check_shapes(cfg, topo)
        self.cfg, self.topo, self.mode, self.streams = cfg, topo, topo.mode, streams
        self.plan = plan = PLANS[topo.mode](topo)
        self.tok = plan.tok_embedding(serial.tok)
        self.pos = plan.pos_embedding(serial.pos)
        self.blocks = nn.ModuleList(ParallelBlock(b, plan, cfg, streams) for b in serial.blocks)
        self.ln_f = plan.layernorm(serial.ln_f)
        self.head = plan.linear(serial.head, "col")
        for local, full in _pairs(self, serial):      # for the global gradient norm
            for name, p in local.named_parameters():
                p.full_numel = getattr(full, name.split(".")[-1]).numel()

    def embed(self, idx):
        """Global ids [B, T] → this rank's activation."""
        ids = self.plan.split_batch(idx)
        T = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))
        return parallel_dropout(x, self.cfg.dropout, self.training, self.streams,
                                self.plan.resid_kind)

    def local_targets(self, targets):
        split = getattr(self.plan, "split_targets", self.plan.split_batch)
        return split(targets)

    def forward(self, idx, targets=None):
        """idx, targets: the global batch (B, T), identical on every rank.

        Returns (local logits split over batch and vocabulary, global mean loss or None)."""
        if idx.shape[1] > self.cfg.seq_len:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than "
                             f"seq_len={self.cfg.seq_len}")
        check_shapes(self.cfg, self.topo, idx.shape[0])
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            per_token = vocab_parallel_cross_entropy(logits, self.local_targets(targets),
                                                     self.plan.vocab_group)
            loss = self.plan.reduce_loss(per_token.mean())
        return logits, loss


def _pairs(pmodel, serial):
    """(parallel module, serial module) for every parameter-holding unit."""
    out = [(pmodel.tok, serial.tok), (pmodel.pos, serial.pos)]
    for pb, sb in zip(pmodel.blocks, serial.blocks):
        out += [(pb.ln1, sb.ln1), (pb.qkv, sb.attn.qkv), (pb.proj, sb.attn.proj),
                (pb.ln2, sb.ln2), (pb.fc1, sb.mlp.fc1), (pb.fc2, sb.mlp.fc2)]
    return out + [(pmodel.ln_f, serial.ln_f), (pmodel.head, serial.head)]


def set_streams(pmodel: ParallelGPT, streams) -> None:
    """Use ``streams`` (shared.parallel.seeding.RNGStreams) for every dropout of the model."""
    pmodel.streams = streams
    for b in pmodel.blocks:
        b.streams = streams


def global_grad_norm(pmodel: ParallelGPT) -> torch.Tensor:
    """The L2 norm of the serial model's gradient, from the local pieces (one all-reduce).

    A piece held by ``r`` ranks (r = P·local/full elements) is weighted by 1/r, so replicated
    parameters count once."""
    P = pmodel.topo.grid_size
    sq = torch.zeros(1)
    for p in pmodel.parameters():
        if p.grad is not None:
            sq += p.grad.detach().float().pow(2).sum().cpu() * (p.full_numel / (P * p.numel()))
    return raw_all_reduce(sq.to(next(pmodel.parameters()).device), pmodel.topo["tensor"]).sqrt()[0]


def shard_like(pmodel: ParallelGPT, serial_tensors: dict) -> list:
    """This rank's pieces of a serial-layout dict (e.g. optimizer moments), in the order of
    ``pmodel.parameters()``: the inverse of ``serial_state_dict(pmodel, pick=...)``."""
    with torch.random.fork_rng(devices=[]):
        carrier = GPT(pmodel.cfg)
        carrier.load_state_dict(serial_tensors)
        shards = ParallelGPT(carrier, pmodel.topo)
    return [p.detach() for p in shards.parameters()]


def parallelize(serial: GPT, topo, streams=None) -> ParallelGPT:
    """The parallel model of ``topo.mode`` holding this rank's shards of ``serial``'s weights
    (on ``serial``'s device; the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        return ParallelGPT(serial, topo, streams)


# ----------------------------------------------------------------------------------------------
# back to the serial layout

_BLOCK_NAMES = {"ln1": "ln1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "ln2",
                "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def serial_state_dict(pmodel: ParallelGPT, grad: bool = False, pick=None) -> dict:
    """The full serial state dict, on every rank: of the parameters, of their gradients
    (``grad=True``) or of any tensor shaped like each parameter (``pick(param)``, e.g. an
    optimizer moment). Collective: every rank of the tensor grid must call it."""
    if pick is None:
        pick = (lambda p: p.grad) if grad else (lambda p: p)
    out = {}

    def put(prefix, module):
        for k, v in module.serial_state(pick).items():
            out[f"{prefix}.{k}"] = v.detach().clone()

    put("tok", pmodel.tok)
    put("pos", pmodel.pos)
    for i, b in enumerate(pmodel.blocks):
        for local, serial in _BLOCK_NAMES.items():
            put(f"blocks.{i}.{serial}", getattr(b, local))
    put("ln_f", pmodel.ln_f)
    put("head", pmodel.head)
    return out


def to_serial(pmodel: ParallelGPT) -> GPT:
    """A serial GPT holding the gathered weights (collective)."""
    model = GPT(pmodel.cfg)
    model.load_state_dict(serial_state_dict(pmodel))
    return model
