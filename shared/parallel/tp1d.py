"""Megatron-LM 1D tensor parallelism (Shoeybi et al. 2019, arXiv 1909.08053): the baseline of the
2D/2.5D/3D papers, kept in ``shared/`` because ``tensor_parallel/`` and ``seqpar/`` both use it.

P ranks of one ``group`` each hold a slice of every weight:

=========================  ======================  ================  ===========================
layer                      local weight             forward           backward
=========================  ======================  ================  ===========================
ColumnParallelLinear       W [n/P, k], b [n/P]      (none)            all-reduce dX
RowParallelLinear          W [n, k/P], b [n] (rep)  all-reduce Y      (none)
VocabParallelEmbedding     E [V/P, D]               all-reduce        (none)
vocab_parallel_cross_entropy  logits [..., V/P]     3 all-reduces of  (none: the reductions'
                                                    [N] (max via      consumers are replicated)
                                                    all-gather)
=========================  ======================  ================  ===========================

Weights use the ``nn.Linear`` / ``nn.Embedding`` layouts. Every layer is built either from scratch
(the full weight is initialised with torch's default initialisation on every rank, then sliced, so
a parallel layer equals the serial layer of the same seed as long as all ranks share the seed) or
with ``from_serial(module, group)`` from a full serial module (built on the meta device, then
given this rank's slices: no full random init, the serial module's dtype and device kept);
``to_serial()`` gathers the full module back on every rank, in the layers' dtype and device. A transformer layer built as qkv/fc1 column + proj/fc2 row issues
2 all-reduces of ``N·h`` forward and 2 backward (``N`` tokens, ``h`` hidden).

Dropout: :func:`parallel_dropout` draws from an :class:`shared.parallel.seeding.RNGStreams` stream:
``"replicated"`` for activations that are identical on every rank (after a row-parallel
all-reduce), ``"sharded"`` for activations that differ per rank (attention heads).

All collectives go through :mod:`shared.parallel.comm`; nothing here calls ``torch.distributed``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .comm import (copy_to_group, gather_from_group, raw_all_gather, reduce_from_group,
                   split_to_group)
from .topology import Group


def _divide(n: int, p: int, what: str) -> int:
    if n % p:
        raise ValueError(f"{what} = {n} is not divisible by the {p} ranks of the 1D tensor group; "
                         f"choose {what} as a multiple of {p} (e.g. {n + (-n) % p}) or use "
                         f"{p} ranks that divide it")
    return n // p


def _chunk(full: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """This rank's contiguous chunk of a full tensor along ``dim``."""
    size = full.shape[dim] // group.size
    return full.narrow(dim, group.rank * size, size).clone()


def _gather(local: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    return raw_all_gather(local.detach(), dim, group)


def _param(t: torch.Tensor) -> nn.Parameter:
    """A parameter holding ``t`` as is (dtype and device kept)."""
    return nn.Parameter(t.contiguous())


class ColumnParallelLinear(nn.Module):
    """``Y = X Aᵀ + b`` with ``A`` [n, k] split along its output rows: rank i holds
    ``A[i·n/P:(i+1)·n/P]`` and the matching bias slice; the input is replicated.

    Forward: ``copy_to_group`` (identity; its backward all-reduces dX), then the local Linear.
    ``gather_output=True`` all-gathers Y on the last dim (backward: keep own chunk).
    """

    def __init__(self, in_features: int, out_features: int, group: Group, bias: bool = True,
                 gather_output: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group, self.gather_output = group, gather_output
        local_out = _divide(out_features, group.size, "out_features")
        full = nn.Linear(in_features, out_features, bias=bias)  # same init as the serial layer
        self.weight = nn.Parameter(_chunk(full.weight.data, 0, group))   # [n/P, k]
        self.bias = nn.Parameter(_chunk(full.bias.data, 0, group)) if bias else None  # [n/P]
        assert self.weight.shape == (local_out, in_features)

    @classmethod
    def from_serial(cls, module: nn.Linear, group: Group, gather_output: bool = False):
        """This rank's slice of ``module``, in its dtype and on its device (no full init)."""
        with torch.device("meta"):
            layer = cls(module.in_features, module.out_features, group, module.bias is not None,
                        gather_output)
        layer.weight = _param(_chunk(module.weight.detach(), 0, group))
        if module.bias is not None:
            layer.bias = _param(_chunk(module.bias.detach(), 0, group))
        return layer

    def to_serial(self) -> nn.Linear:
        """The full ``nn.Linear`` (collective), in the layer's dtype and on its device."""
        with torch.device("meta"):
            out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out.weight = _param(_gather(self.weight, 0, self.group))
        if self.bias is not None:
            out.bias = _param(_gather(self.bias, 0, self.group))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_group(x, self.group)                 # [..., k] replicated
        y = F.linear(x, self.weight, self.bias)          # [..., n/P]
        return gather_from_group(y, -1, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}/{self.group.size}, "
                f"bias={self.bias is not None}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """``Y = X Aᵀ + b`` with ``A`` [n, k] split along its input columns: rank i holds
    ``A[:, i·k/P:(i+1)·k/P]``; the input arrives split on its last dim (``input_is_parallel``) or
    is split here. The partial products are all-reduced (``reduce_from_group``, backward
    identity); the bias [n] is replicated and added after the all-reduce, so its gradient is the
    same on every rank and needs no communication.
    """

    def __init__(self, in_features: int, out_features: int, group: Group, bias: bool = True,
                 input_is_parallel: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group, self.input_is_parallel = group, input_is_parallel
        _divide(in_features, group.size, "in_features")
        full = nn.Linear(in_features, out_features, bias=bias)
        self.weight = nn.Parameter(_chunk(full.weight.data, 1, group))   # [n, k/P]
        self.bias = nn.Parameter(full.bias.data.clone()) if bias else None  # [n] replicated

    @classmethod
    def from_serial(cls, module: nn.Linear, group: Group, input_is_parallel: bool = True):
        """This rank's slice of ``module``, in its dtype and on its device (no full init)."""
        with torch.device("meta"):
            layer = cls(module.in_features, module.out_features, group, module.bias is not None,
                        input_is_parallel)
        layer.weight = _param(_chunk(module.weight.detach(), 1, group))
        if module.bias is not None:
            layer.bias = _param(module.bias.detach().clone())
        return layer

    def to_serial(self) -> nn.Linear:
        """The full ``nn.Linear`` (collective), in the layer's dtype and on its device."""
        with torch.device("meta"):
            out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out.weight = _param(_gather(self.weight, 1, self.group))
        if self.bias is not None:
            out.bias = _param(self.bias.detach().clone())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = split_to_group(x, -1, self.group)        # [..., k/P]
        y = reduce_from_group(F.linear(x, self.weight), self.group)  # [..., n] replicated
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}/{self.group.size}, out={self.out_features}, "
                f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}")


class VocabParallelEmbedding(nn.Module):
    """Embedding table [V, D] split along the vocabulary: rank i holds rows
    ``[i·V/P, (i+1)·V/P)``. Ids outside the local range look up row 0 and are zeroed; the
    partial embeddings are all-reduced (backward identity: the result is replicated)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, group: Group):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.group = num_embeddings, embedding_dim, group
        self.per_rank = _divide(num_embeddings, group.size, "num_embeddings (vocabulary size)")
        self.start = group.rank * self.per_rank
        full = nn.Embedding(num_embeddings, embedding_dim)
        self.weight = nn.Parameter(_chunk(full.weight.data, 0, group))   # [V/P, D]

    @classmethod
    def from_serial(cls, module: nn.Embedding, group: Group):
        """This rank's rows of ``module``, in its dtype and on its device (no full init)."""
        with torch.device("meta"):
            layer = cls(module.num_embeddings, module.embedding_dim, group)
        layer.weight = _param(_chunk(module.weight.detach(), 0, group))
        return layer

    def to_serial(self) -> nn.Embedding:
        """The full ``nn.Embedding`` (collective), in the layer's dtype and on its device."""
        with torch.device("meta"):
            out = nn.Embedding(self.num_embeddings, self.embedding_dim)
        out.weight = _param(_gather(self.weight, 0, self.group))
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        emb = F.embedding(local.masked_fill(outside, 0), self.weight)   # [..., D]
        emb = emb.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_group(emb, self.group)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}/{self.group.size}, {self.embedding_dim}"


def vocab_parallel_cross_entropy(local_logits: torch.Tensor, targets: torch.Tensor, group: Group,
                                 ignore_index: int = -100) -> torch.Tensor:
    """Per-token cross-entropy of logits split along the vocabulary, never gathered.

    Args:
        local_logits: [..., V/P], this rank's chunk ``group.rank`` of the vocabulary.
        targets: [...] global class ids (identical on every rank of ``group``).
    Returns:
        [...] loss per token (0 where ``targets == ignore_index``), identical on every rank.

    ``loss = log Σ_v exp(z_v − m) − (z_t − m)`` with ``m`` the global max (all-gathered, no
    gradient). The two sums are ``reduce_from_group`` (backward identity), which is the exact
    adjoint because their consumers are replicated: each rank then receives
    ``softmax − onehot`` for its own vocabulary chunk.
    """
    z = local_logits.float()
    v_local = z.shape[-1]
    start = group.rank * v_local
    with torch.no_grad():
        local_max = z.amax(dim=-1, keepdim=True)                          # [..., 1]
        m = raw_all_gather(local_max, -1, group).amax(dim=-1, keepdim=True)
    z = z - m
    sum_exp = reduce_from_group(z.exp().sum(dim=-1), group)               # [...]
    ignored = targets == ignore_index
    local_t = targets - start
    mine = (local_t >= 0) & (local_t < v_local) & ~ignored
    picked = z.gather(-1, local_t.clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    target_logit = reduce_from_group(picked * mine, group)                # [...]
    loss = torch.log(sum_exp) - target_logit
    return loss.masked_fill(ignored, 0.0)


def parallel_dropout(x: torch.Tensor, p: float, training: bool, streams=None,
                     kind: str = "sharded") -> torch.Tensor:
    """Dropout drawing its mask from ``streams.fork(kind)`` (``"replicated"`` for activations
    identical on every rank of the tensor group, ``"sharded"`` otherwise); plain dropout when
    ``streams`` is None."""
    if not training or p == 0.0:
        return x
    if streams is None:
        return F.dropout(x, p, True)
    with streams.fork(kind):
        return F.dropout(x, p, True)
