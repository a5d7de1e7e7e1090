"""How the GPT is distributed: Megatron 1D, Optimus 2D, Tesseract 2.5D and 3D tensor parallelism,
written as a plan keyed by module name and applied from outside the serial model.

    topo = build_grid("2d", dp=2)                  # or "1d", "2p5d" (depth=d), "3d"; × dp
    pmodel = build_parallel(cfg, topo)             # only this rank's pieces, serial init values
    pmodel = parallelize(GPT(cfg), topo)           # or: cut a given serial model (in place)
    local_logits, loss = pmodel(idx, targets)      # idx/targets: the full global batch
    serial_state_dict(pmodel)                      # == the serial state dict (gathered)
    pmodel.sharded_state_dict(optimizer)           # DTensors of the serial tensors (DCP)

The plan is the same for every mode (:func:`tensor_parallel_plan`)::

    "tok", "pos"                     → layout.tok_embedding, layout.pos_embedding
    "blocks.*.ln1", "blocks.*.ln2",
    "ln_f"                           → layout.layernorm
    "blocks.*.attn.qkv", "…mlp.fc1",
    "head"                           → layout.colwise   (the first Linear of a pair)
    "blocks.*.attn.proj", "…mlp.fc2" → layout.rowwise   (the second)
    "blocks.*.attn"                  → LocalHeadsAttention (this rank's heads)
    "*drop"                          → StreamDropout (a mask from the right RNG stream)

and a mode's *layout* supplies the layers (from :mod:`shared.parallel.tp1d`,
:mod:`tensor_parallel.parallel_2d`, :mod:`tensor_parallel.parallel_3d`), the batch split and the
loss reduction. The serial ``GPT.forward`` then runs unchanged on the local pieces;
:class:`ParallelGPT` only splits the batch and computes the vocabulary-parallel loss:

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

Parameter names stay those of the serial model, so :func:`serial_state_dict` gathers every
piece back under its serial name, and :func:`shard_state` cuts a serial-layout dict (weights or
optimizer moments) into this rank's pieces. Each layout's ``spec`` says where a piece sits in
the serial tensor (which grid coordinate splits which dimension): it gives the pieces' initial
values (:meth:`ParallelGPT.init_shards`) and their DTensor placements for
``torch.distributed.checkpoint`` (:meth:`ParallelGPT.sharded_state_dict`), so a checkpoint
written under one layout loads under any other. :meth:`ParallelGPT.grad_plans` tells the training
core to sum gradients over the data replicas and which group each gradient piece is sharded
over, so that clipping uses the norm of the serial model's gradient.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from shared.parallel.comm import raw_all_gather, raw_split, reduce_from_group
from shared.parallel.plan import apply_plan
from shared.parallel.topology import TopologyError, build_topology, coordinates, world_group
from shared.parallel.tp1d import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                  parallel_dropout, vocab_parallel_cross_entropy)
from shared.train.config import ConfigError
from shared.train.gradients import GradSync, NormPart

from .models.gpt import GPT, GPTConfig, attention_core, init_values
from .parallel_2d import Embedding2D, Grid2D, LayerNorm2D, Linear2D
from .parallel_3d import Embedding3D, Groups3D, LayerNorm3D, Linear3D

MODES = ("1d", "2d", "2p5d", "3d")


# ----------------------------------------------------------------------------------------------
# the grid and the shapes it can split, checked before any work

def build_grid(mode: str, depth: int = 1, world_size: int | None = None,
               rank: int | None = None, dp: int = 1):
    """The topology of ``mode`` × ``dp`` data-parallel replicas over the whole job
    (``world_size``/``rank`` default to the job's; the tensor grid has ``world / dp`` ranks).

    An impossible world size raises :class:`TopologyError`; for 2.5D the message also says which
    ``--depth`` values fit the world size (world = q²·d·dp)."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is not a tensor-parallel mode; choose one of: "
                          f"{', '.join(MODES)}")
    world = world_size or world_group().size
    if dp < 1 or world % dp:
        raise TopologyError(f"--dp {dp} does not divide the {world} ranks of the job (world = "
                            f"tensor grid × dp); use a --dp that divides {world}, e.g. --dp 1")
    try:
        return build_topology(mode, world_size=world_size, rank=rank, depth=depth,
                              grid_size=world // dp)
    except TopologyError:
        if mode != "2p5d":
            raise
        world //= dp
        fits = [(q, world // (q * q)) for q in range(2, math.isqrt(world) + 1)
                if world % (q * q) == 0]
        how = (" or ".join(f"--depth {d} (q={q})" for q, d in fits) if fits else
               f"--depth {world} (q=1: no tensor split), or a world size with a square factor "
               f"q² >= 4 (4, 8, 9, 12, 16, ... ranks)")
        raise TopologyError(f"2.5D tensor parallelism needs world = q²·d ranks (q×q grid, d "
                            f"slices); got {world} ranks with --depth {depth}: for {world} ranks "
                            f"use {how}") from None


def batch_shards(topo) -> int:
    """Number of pieces the global batch is cut into."""
    q = topo.shape.get("q", 1)
    return {"1d": 1, "2d": q, "2p5d": q * topo.shape.get("d", 1), "3d": q * q}[topo.mode]


def check_shapes(cfg: GPTConfig, topo, batch_size: int | None = None) -> None:
    """Raise one :class:`ConfigError` listing every size the mode cannot split, with a valid
    alternative. ``batch_size``: the global batch, split over the ``dp`` replicas and then over
    the grid's batch shards."""
    mode = topo.mode
    q = topo.shape.get("q", 1)
    p = topo.grid_size
    if mode == "1d":        # heads and vocabulary split P ways
        needs = [("heads", cfg.heads, p), ("hidden", cfg.hidden, p),
                 ("vocab_size", cfg.vocab_size, p)]
    else:                   # heads/vocabulary split q ways; biases, LayerNorm, embeddings q² ways
        needs = [("heads", cfg.heads, q), ("hidden", cfg.hidden, q * q),
                 ("vocab_size", cfg.vocab_size, q)]
    if batch_size is not None:
        needs.append(("batch_size", batch_size, batch_shards(topo) * topo.dp_size))
    bad = [f"--{name} {value} must be a multiple of {m} (e.g. {value + (-value) % m})"
           for name, value, m in needs if value % m]
    if bad:
        dp = f" × {topo.dp_size} data-parallel replicas" if topo.dp_size > 1 else ""
        raise ConfigError(f"{mode} tensor parallelism on {p} ranks "
                          f"({', '.join(f'{k}={v}' for k, v in topo.shape.items())}){dp} cannot split "
                          f"this model: " + "; ".join(bad))


# ----------------------------------------------------------------------------------------------
# layouts: the layers, batch split and loss of each mode. Every method taking (name, module) is a
# style of the plan: it returns the module that replaces the serial one.

class Layout1D:
    """Megatron: qkv/fc1/head column-parallel, proj/fc2 row-parallel, vocab-parallel token
    embedding; LayerNorms and the position embedding stay whole on every rank."""
    resid_kind = "replicated"

    def __init__(self, topo):
        self.topo, self.g = topo, topo["tensor"]
        self.vocab_group = self.g

    def colwise(self, name, linear):
        return ColumnParallelLinear.from_serial(linear, self.g)

    def rowwise(self, name, linear):
        return RowParallelLinear.from_serial(linear, self.g)

    def layernorm(self, name, ln):
        return ln                                   # replicated

    def tok_embedding(self, name, emb):
        return VocabParallelEmbedding.from_serial(emb, self.g)

    def pos_embedding(self, name, emb):
        return emb                                  # replicated

    def split_batch(self, t):
        return t

    split_targets = split_batch

    def shard_activation(self, x):
        """The full residual-stream activation [B, T, h] → this rank's piece."""
        return x

    def reduce_loss(self, local_mean):
        return local_mean

    def local_heads(self, heads):
        return heads // self.g.size

    def norm_group(self, module, pname):
        """(group the gradient of ``module.pname`` is sharded over or None, replicas)."""
        sharded = isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)) or (
            isinstance(module, RowParallelLinear) and pname == "weight")
        return (self.g if sharded else None), 1

    MESH = ("tensor",)
    """grid coordinates as device-mesh dimensions, outermost first (see :func:`device_mesh`)"""

    def spec(self, module, pname):
        """Where ``module.pname`` sits in the serial tensor: ({grid coordinate: serial dim it
        splits}, whether the local piece is stored transposed); the other coordinates hold
        copies. Chunks split twice along one dim are ordered by :attr:`MESH`."""
        if isinstance(module, RowParallelLinear):
            return ({"tensor": 1} if pname == "weight" else {}), False
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            return {"tensor": 0}, False
        return {}, False


class Layout2D:
    """Optimus 2D (``depth`` 1) and Tesseract 2.5D (paper version: batch over d·q)."""
    resid_kind = "sharded"

    def __init__(self, topo):
        self.topo = topo
        dep = topo["dep"] if topo.mode == "2p5d" else None
        self.grid = Grid2D(topo["row"], topo["col"], dep)
        self.batch_group = topo["xz"] if topo.mode == "2p5d" else topo["col"]
        self.vocab_group = topo["row"]

    def colwise(self, name, linear):
        return Linear2D(linear, self.grid, self.topo.mode)

    rowwise = colwise

    def layernorm(self, name, ln):
        return LayerNorm2D(ln, self.grid, self.topo.mode)

    def tok_embedding(self, name, emb):
        return Embedding2D(emb, self.grid, self.topo.mode)

    pos_embedding = tok_embedding

    def split_batch(self, t):
        g = self.batch_group
        n = t.shape[0] // g.size
        return t[g.rank * n:(g.rank + 1) * n]

    split_targets = split_batch

    def shard_activation(self, x):
        h = x.shape[-1] // self.grid.q
        return self.split_batch(x)[..., self.grid.c * h:(self.grid.c + 1) * h]

    def reduce_loss(self, local_mean):
        g = self.batch_group
        return reduce_from_group(local_mean / g.size, g)

    def local_heads(self, heads):
        return heads // self.grid.q

    def norm_group(self, module, pname):
        # every piece differs across the q² ranks of a depth slice; the d slices hold copies
        return self.topo["tensor"], self.topo.shape.get("d", 1)

    @property
    def MESH(self):
        return ("k", "c", "r") if self.topo.mode == "2p5d" else ("c", "r")

    def spec(self, module, pname):
        # W block (r, c) of Wᵀ [k, n] = block (c, r) of the serial [n, k], stored transposed;
        # bias / γ / β / embedding columns: piece c·q + r of q² (c before r in MESH)
        if isinstance(module, Linear2D) and pname == "weight":
            return {"c": 0, "r": 1}, True
        dim = 1 if isinstance(module, Embedding2D) else 0
        return {"c": dim, "r": dim}, False


class Layout3D:
    """3D: Linear3D pairs with swapped input/output groups."""
    resid_kind = "sharded"

    def __init__(self, topo):
        self.topo = topo
        self.orig = Groups3D.from_topology(topo)
        self.vocab_group = topo["input"]
        self.loss_group = topo["output_x_weight"]

    def colwise(self, name, linear):
        """The first Linear3D of a pair (qkv, fc1, head), on the original groups."""
        return Linear3D(linear, self.orig)

    def rowwise(self, name, linear):
        """The second (proj, fc2), with input and output swapped."""
        return Linear3D(linear, self.orig.swapped(self.topo))

    def layernorm(self, name, ln):
        return LayerNorm3D(ln, self.topo)

    def tok_embedding(self, name, emb):
        return Embedding3D(emb, self.topo)

    pos_embedding = tok_embedding

    def _rows(self, t, second):
        q = self.orig.q
        n = t.shape[0] // (q * q)
        b = self.topo["weight"].rank * q + self.topo[second].rank
        return t[b * n:(b + 1) * n]

    def split_batch(self, t):
        return self._rows(t, "input")

    def split_targets(self, t):
        """Rows of the logits: block ``weight·q + output`` (after the head's reduce-scatter)."""
        return self._rows(t, "output")

    def shard_activation(self, x):
        h = x.shape[-1] // self.orig.q
        k = self.topo["output"].rank
        return self.split_batch(x)[..., k * h:(k + 1) * h]

    def reduce_loss(self, local_mean):
        g = self.loss_group
        return reduce_from_group(local_mean / g.size, g)

    def local_heads(self, heads):
        return heads // self.orig.q

    MESH = ("k", "j", "i")
    _COORD = {"weight": "i", "input": "j", "output": "k"}

    def spec(self, module, pname):
        if isinstance(module, Linear3D):
            a = self._COORD[module.g.inp.name.split(".")[1]]
            o = self._COORD[module.g.out.name.split(".")[1]]
            if pname == "weight":      # Wᵀ rows: piece out·q + wgt of q²; columns: block inp
                return {a: 0, o: 1, "i": 1}, True
            return {a: 0}, False
        if isinstance(module, LayerNorm3D):
            return {"k": 0}, False
        return {"k": 1, "i": 1}, False                 # Embedding3D: piece out·q + wgt

    def norm_group(self, module, pname):
        if isinstance(module, Linear3D):          # W differs on every rank; b [n/q] block inp
            return (self.topo["tensor"] if pname == "weight" else module.g.inp), 1
        if isinstance(module, LayerNorm3D):       # γ, β [h/q]: hidden block = output coordinate
            return module.out, 1
        return self.topo["output_x_weight"], 1    # Embedding3D [V, h/q²]: block (output, weight)


LAYOUTS = {"1d": Layout1D, "2d": Layout2D, "2p5d": Layout2D, "3d": Layout3D}


# ----------------------------------------------------------------------------------------------
# attention on local heads and dropout from the RNG streams

class DropoutStreams:
    """The RNG streams (:class:`shared.parallel.RNGStreams`) every dropout of one parallel model
    draws from; the training step replaces them each step (:func:`set_streams`)."""

    def __init__(self, streams=None):
        self.streams = streams


def replay_streams(slot: DropoutStreams):
    """``context_fn`` for ``torch.utils.checkpoint``: the recomputation of a checkpointed block
    draws the same dropout masks as its forward (the streams' states are saved before the
    forward, restored for the recomputation, then put back)."""
    def context_fn():
        saved = {}

        @contextlib.contextmanager
        def forward():
            if slot.streams is not None:
                saved.update(slot.streams.state_dict())
            yield

        @contextlib.contextmanager
        def recompute():
            streams = slot.streams
            if streams is None or not saved:
                yield
                return
            now = streams.state_dict()
            streams.load_state_dict(saved)
            try:
                yield
            finally:
                streams.load_state_dict(now)
        return forward(), recompute()
    return context_fn


class StreamDropout(nn.Module):
    """Dropout whose mask comes from ``slot.streams.fork(kind)``: ``"replicated"`` where the
    activation is the same on every rank (1D residual stream), ``"sharded"`` otherwise."""

    def __init__(self, p: float, slot: DropoutStreams, kind: str):
        super().__init__()
        self.p, self.slot, self.kind = p, slot, kind

    def forward(self, x):
        return parallel_dropout(x, self.p, self.training, self.slot.streams, self.kind)

    def extra_repr(self) -> str:
        return f"p={self.p}, stream={self.kind}"


class LocalHeadsAttention(nn.Module):
    """The serial attention on this rank's ``heads`` (every mode splits the heads); its
    attention dropout draws from the sharded stream, since the heads differ per rank."""

    def __init__(self, attn, heads: int, slot: DropoutStreams):
        super().__init__()
        self.qkv, self.proj, self.drop = attn.qkv, attn.proj, attn.drop
        self.heads, self.dropout, self.slot = heads, attn.dropout, slot

    def forward(self, x):                                 # x: the mode's local activation
        qkv = self.qkv(x)                                 # [b', s, heads·3·hd] local heads
        streams = self.slot.streams
        forked = self.training and self.dropout > 0 and streams is not None
        with streams.fork("sharded") if forked else contextlib.nullcontext():
            y = attention_core(qkv, self.heads, self.dropout, self.training)
        return self.drop(self.proj(y))


# ----------------------------------------------------------------------------------------------
# the plan and the parallel model

def tensor_parallel_plan(layout, slot: DropoutStreams) -> dict:
    """``{module-name pattern: style}`` for :func:`shared.parallel.plan.apply_plan`."""
    return {
        "tok": layout.tok_embedding,
        "pos": layout.pos_embedding,
        "blocks.*.ln1": layout.layernorm,
        "blocks.*.ln2": layout.layernorm,
        "ln_f": layout.layernorm,
        "blocks.*.attn.qkv": layout.colwise,
        "blocks.*.attn.proj": layout.rowwise,
        "blocks.*.mlp.fc1": layout.colwise,
        "blocks.*.mlp.fc2": layout.rowwise,
        "head": layout.colwise,
        "blocks.*.attn": lambda name, attn: LocalHeadsAttention(
            attn, layout.local_heads(attn.heads), slot),
        "*drop": lambda name, drop: StreamDropout(drop.p, slot, layout.resid_kind),
    }


class ParallelGPT(nn.Module):
    """:class:`tensor_parallel.models.GPT` on one rank of a tensor-parallel grid.

    ``self.gpt`` is the serial model with the plan applied (its ``forward`` unchanged); this
    module splits the global batch and computes the vocabulary-parallel loss."""

    def __init__(self, gpt: GPT, topo, streams=None):
        super().__init__()
        check_shapes(gpt.cfg, topo)
        self.cfg, self.topo, self.mode = gpt.cfg, topo, topo.mode
        self.data_group = topo["data"]
        self.layout = LAYOUTS[topo.mode](topo)
        self.rng = DropoutStreams(streams)
        with torch.random.fork_rng(devices=[]):     # tp1d layers draw a throw-away init
            self.gpt = apply_plan(gpt, tensor_parallel_plan(self.layout, self.rng))

    def set_checkpointing(self, on: bool = True) -> None:
        """Activation checkpointing per block; the recomputation replays the dropout streams."""
        self.gpt.set_checkpointing(on, replay_streams(self.rng))

    def set_regather(self, on: bool = True) -> None:
        """3D only (``--regather``): each Linear3D gathers its input and weight blocks again in
        backward instead of saving the gathered copies (see :class:`.parallel_3d._Matmul3D`)."""
        for module in self.gpt.modules():
            if isinstance(module, Linear3D):
                module.regather = on

    def forward(self, idx, targets=None):
        """idx, targets: the global batch (B, T), identical on every rank. With ``dp`` data
        replicas, replica ``d`` takes rows chunk ``d`` of ``dp``, then the grid splits them.

        Returns (local logits split over batch and vocabulary, mean loss of the global batch or
        None). The loss is summed over the data group forward (identity backward), so each
        replica's gradients are its share of the global mean's: :meth:`grad_plans` sums them."""
        check_shapes(self.cfg, self.topo, idx.shape[0])
        logits, _ = self.gpt(self.layout.split_batch(raw_split(idx, 0, self.data_group)))
        loss = None
        if targets is not None:
            per_token = vocab_parallel_cross_entropy(logits, self.local_rows(targets),
                                                     self.layout.vocab_group)
            loss = self.layout.reduce_loss(per_token.mean())
            if self.data_group.size > 1:
                loss = reduce_from_group(loss / self.data_group.size, self.data_group)
        return logits, loss

    def local_rows(self, t):
        """This rank's rows of the logits (of the global batch ``t``)."""
        return self.layout.split_targets(raw_split(t, 0, self.data_group))

    def grad_plans(self):
        """The training core's plans (:mod:`shared.train.gradients`): every gradient summed over
        the data replicas (each holds its share of the global mean loss's gradient; a no-op
        without data parallelism), then clipped by the serial model's norm."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [GradSync(params, [self.data_group], average=False)], self.grad_norm_parts()

    def local_region(self, module, pname, shape):
        """Where this rank's ``module.pname`` sits in the serial tensor of ``shape``:
        ([(start, length)] per serial dim, whether it is stored transposed)."""
        split, transposed = self.layout.spec(module, pname)
        region = []
        for dim, n in enumerate(shape):
            index, parts = 0, 1
            for coord in self.layout.MESH:              # outer coordinate first
                if split.get(coord) == dim:
                    size = _coord_size(self.topo, coord)
                    index, parts = index * size + self.topo.coords[coord], parts * size
            region.append((index * (n // parts), n // parts))
        return region, transposed

    @torch.no_grad()
    def init_shards(self, seed: int) -> None:
        """Give every local piece its initial values: those of the serial ``GPT`` whose
        ``init_seed`` is ``seed``, computed for this piece alone
        (:func:`tensor_parallel.models.gpt.init_values`)."""
        shapes = serial_shapes(self.cfg)
        for name, module, pname, p in self.pieces():
            region, transposed = self.local_region(module, pname, shapes[name])
            value = init_values(name, shapes[name], region, seed, device=p.device)
            p.copy_(value.t() if transposed else value)

    def pieces(self):
        """(serial name, module, its parameter name, parameter) of every local piece."""
        for mname, module in self.gpt.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                yield (f"{mname}.{pname}" if mname else pname), module, pname, p

    def sharded_state_dict(self, optimizer=None) -> dict:
        """This rank's pieces as DTensors of the serial tensors (keys ``model.<serial name>``;
        with ``optimizer``, AdamW's moments as ``optim.exp_avg.<name>`` and
        ``optim.exp_avg_sq.<name>`` (created as zeros when it has no state yet: identical to a fresh AdamW) and its step as
        ``optim.step``). Views of the live tensors, no copy: ``torch.distributed.checkpoint``
        writes them without gathering and loads into them in place, from any layout. In a
        single process (no mesh) the values are the plain serial tensors."""
        mesh = device_mesh(self.topo, self.layout.MESH, next(self.parameters()).device)
        shapes = serial_shapes(self.cfg)
        out = {}
        picks = [("model.", lambda p: p)]
        if optimizer is not None:
            for p in self.parameters():
                if p not in optimizer.state:
                    optimizer.state[p] = {"step": torch.tensor(0.0),
                                          "exp_avg": torch.zeros_like(p),
                                          "exp_avg_sq": torch.zeros_like(p)}
            picks += [(f"optim.{key}.", lambda p, k=key: optimizer.state[p][k])
                      for key in ("exp_avg", "exp_avg_sq")]
            out["optim.step"] = next(iter(optimizer.state.values()))["step"].detach().clone()
        for prefix, pick in picks:
            for name, module, pname, p in self.pieces():
                split, transposed = self.layout.spec(module, pname)
                local = pick(p).detach()
                out[prefix + name] = _dtensor(local.t() if transposed else local, mesh,
                                              self.layout.MESH, split, shapes[name])
        return out

    def grad_norm_parts(self) -> list[NormPart]:
        """The parameters grouped by the group their gradient pieces are sharded over (for
        :func:`shared.train.gradients.clip_gradients`): the global norm is the serial one."""
        parts: dict[tuple, NormPart] = {}
        for module in self.gpt.modules():
            for pname, p in module.named_parameters(recurse=False):
                group, replicas = self.layout.norm_group(module, pname)
                key = (id(group), replicas)
                parts.setdefault(key, NormPart([], group, replicas)).params.append(p)
        return list(parts.values())


def build_parallel(cfg: GPTConfig, topo, device=None, streams=None) -> ParallelGPT:
    """Shard-only construction: the parallel GPT of ``topo`` with each rank allocating only its
    own pieces, initialised exactly as the serial ``GPT(cfg)`` built at the same point of the
    global RNG (one draw from it picks ``init_seed``; every piece is then computed alone).

    The serial model is built on the meta device (no memory), the plan applied to it, the pieces
    allocated on ``device`` and filled by :meth:`ParallelGPT.init_shards`."""
    with torch.device("meta"):
        gpt = GPT(cfg)
    pmodel = parallelize(gpt, topo, streams).to_empty(device=device or "cpu")
    pmodel.init_shards(gpt.init_seed)
    return pmodel


def parallelize(gpt: GPT, topo, streams=None) -> ParallelGPT:
    """The parallel model of ``topo.mode`` holding this rank's pieces of ``gpt``'s weights.

    ``gpt`` is changed in place (its layers are replaced; pass a copy to keep the serial model);
    the global RNG is left untouched."""
    return ParallelGPT(gpt, topo, streams)


def set_streams(pmodel: ParallelGPT, streams) -> None:
    """Use ``streams`` (shared.parallel.seeding.RNGStreams) for every dropout of the model."""
    pmodel.rng.streams = streams


# ----------------------------------------------------------------------------------------------
# sharded checkpoints: every piece as a DTensor of the serial tensor

def serial_shapes(cfg: GPTConfig) -> dict:
    """The serial parameters' shapes (a GPT built on the meta device: no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(cfg).state_dict().items()}


def device_mesh(topo, grid_dims, device):
    """The job as a ``DeviceMesh`` with dimensions ``("data", *grid_dims)`` (grid coordinates
    of :mod:`shared.parallel.topology`), or None in a single process. Only the rank→coordinate
    map is used (no process groups are created for it)."""
    from torch.distributed.device_mesh import DeviceMesh
    if topo.world_size == 1:
        return None
    shape = [topo.dp_size] + [_coord_size(topo, d) for d in grid_dims]
    ranks = torch.empty(shape, dtype=torch.int64)
    for g in range(topo.world_size):
        c = coordinates(topo.mode, g % topo.grid_size, topo.grid_size, topo.depth)
        ranks[(g // topo.grid_size, *(c[d] for d in grid_dims))] = g
    return DeviceMesh(device.type, ranks, mesh_dim_names=("data", *grid_dims),
                      _init_backend=False, _rank=topo.rank)


def _coord_size(topo, coord):
    if coord == "tensor":
        return topo.grid_size
    return topo.shape["d"] if coord == "k" and topo.mode == "2p5d" else topo.shape["q"]


def _dtensor(local, mesh, grid_dims, split: dict, shape):
    """``local`` as the piece of a serial tensor of ``shape`` split as ``split`` says."""
    from torch.distributed.tensor import DTensor, Replicate, Shard
    if mesh is None:
        return local
    placements = [Replicate()] + [Shard(split[d]) if d in split else Replicate()
                                  for d in grid_dims]
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=stride)


# ----------------------------------------------------------------------------------------------
# to and from the serial layout

# which dimension of each tp1d parameter is split (absent: replicated)
_SPLIT_1D = {ColumnParallelLinear: {"weight": 0, "bias": 0}, RowParallelLinear: {"weight": 1},
             VocabParallelEmbedding: {"weight": 0}}


def _serial_items(module, pick):
    if hasattr(module, "serial_state"):                     # 2D / 2.5D / 3D layers
        return module.serial_state(pick).items()
    dims = _SPLIT_1D.get(type(module), {})
    group = getattr(module, "group", None)
    return [(name, pick(p).detach() if dims.get(name) is None else
             raw_all_gather(pick(p).detach(), dims[name], group))
            for name, p in module.named_parameters(recurse=False)]


def serial_state_dict(pmodel: ParallelGPT, grad: bool = False, pick=None) -> dict:
    """The full serial state dict, on every rank: of the parameters, of their gradients
    (``grad=True``) or of any tensor shaped like each parameter (``pick(param)``, e.g. an
    optimizer moment). Collective: every rank of the tensor grid must call it."""
    if pick is None:
        pick = (lambda p: p.grad) if grad else (lambda p: p)
    out = {}
    for name, module in pmodel.gpt.named_modules():
        for key, value in _serial_items(module, pick):
            out[f"{name}.{key}" if name else key] = value.detach().clone()
    return out


def shard_state(pmodel: ParallelGPT, serial: dict) -> dict:
    """This rank's pieces of a serial-layout dict (weights or optimizer moments), keyed like
    ``pmodel.gpt.state_dict()``: the inverse of :func:`serial_state_dict`. No communication."""
    with torch.random.fork_rng(devices=[]):       # its random init is thrown away
        carrier = GPT(pmodel.cfg)
    carrier.load_state_dict(serial, assign=True)
    local = ParallelGPT(carrier, pmodel.topo)
    return {k: v.detach() for k, v in local.gpt.state_dict().items()}


def to_serial(pmodel: ParallelGPT) -> GPT:
    """A serial GPT holding the gathered weights (collective)."""
    model = GPT(pmodel.cfg)
    model.load_state_dict(serial_state_dict(pmodel))
    return model
