"""Mixture-of-Experts FFN with a top-k router, expert capacity and token dropping.

Paper: Go Wider Instead of Deeper (WideNet), arXiv 2107.11817, Sec. 3.1; routing conventions of
the official TF code (XueFuzhao/WideNet_Code), see ../shared/papers/widenet.md:

* router: ``logits = W_r x`` (no bias); in training add ``eps ~ N(0, (1/E)^2)`` before the
  softmax; take the top-k experts (k = 2); the output is ``sum_{i in topk} p_i FFN_i(x)`` with the
  raw softmax probabilities ``p_i`` (not renormalised over the top-k);
* capacity: each expert takes at most ``C = floor(T * cf * k / E)`` tokens of the ``T`` tokens
  routed together (the local batch: batch x tokens). Slots are given in token order over the
  combined top-k mask; an assignment that overflows is dropped (its branch outputs 0 and the
  residual connection carries the token);
* load-balancing loss per call: ``l = E * sum_i m_i c_i`` with ``m_i`` the mean router probability
  of expert i and ``c_i`` the fraction of the top-k assignments that go to expert i, counted
  *before* dropping (so ``sum_i c_i = 1`` and ``l = 1`` at perfect balance).

Dispatch and combine are vectorised: every (token, choice) assignment gets a flat slot index
``expert * C + position``; ``index_add`` scatters tokens into an ``(E, C, d)`` buffer that the
experts process (one matmul pair per expert), and a gather brings the results back. The experts are a
submodule (``self.experts``) that maps ``(E, C, d) -> (E, C, d)``, so expert parallelism can swap
it for an all-to-all version from outside (``widenet.parallel``) without touching this file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MoEStats:
    """What one MoE call reports besides its output.

    aux_loss: the load-balancing loss ``E * sum_i m_i c_i`` of this call (differentiable in m).
    dropped: fraction of the ``T * k`` assignments that overflowed their expert's capacity.
    capacity: slots per expert used in this call.
    """
    aux_loss: torch.Tensor
    dropped: torch.Tensor
    capacity: int


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """``floor(T * cf * k / E)`` (official code), at least 1 so that a tiny batch still routes."""
    return max(1, int(math.floor(num_tokens * capacity_factor * top_k / num_experts)))


class Experts(nn.Module):
    """E independent FFNs ``Dense(d->f) GELU Drop Dense(f->d) [GELU] Drop``.

    Each expert has parameters of its own, as in the official code (a list of Keras ``mlp()``
    layers): ``w1.<e> (d, f)``, ``b1.<e> (f,)``, ``w2.<e> (f, d)``, ``b2.<e> (d,)`` for expert id
    ``e``. A per-tensor optimizer such as LAMB therefore computes one trust ratio per expert and
    weight, whatever ranks the experts live on, and an expert-parallel shard holds the serial
    model's parameters under the same names. The official Keras ``mlp()`` applies a GELU after the
    second Dense too (``second_gelu``). Glorot-uniform kernels (Keras default), zero biases.

    ``ids`` (default ``range(num_experts)``) names the experts this module holds; ``forward``
    maps ``(len(ids), C, d) -> (len(ids), C, d)``, slice ``j`` going to expert ``ids[j]``.
    """

    def __init__(self, num_experts: int, dim: int, hidden: int, dropout: float = 0.1,
                 second_gelu: bool = True, ids=None):
        super().__init__()
        self.ids = list(range(num_experts) if ids is None else ids)
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        keys = [str(e) for e in self.ids]
        self.w1 = nn.ParameterDict({k: nn.Parameter(torch.empty(dim, hidden)) for k in keys})
        self.b1 = nn.ParameterDict({k: nn.Parameter(torch.zeros(hidden)) for k in keys})
        self.w2 = nn.ParameterDict({k: nn.Parameter(torch.empty(hidden, dim)) for k in keys})
        self.b2 = nn.ParameterDict({k: nn.Parameter(torch.zeros(dim)) for k in keys})
        self.drop = nn.Dropout(dropout)
        self.second_gelu = second_gelu
        bound = math.sqrt(6.0 / (dim + hidden))
        for w in (*self.w1.values(), *self.w2.values()):
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (n, C, d) -> (n, C, d); slice j goes to expert ids[j]
        out = []
        for j, e in enumerate(self.ids):
            k = str(e)
            h = self.drop(F.gelu(torch.addmm(self.b1[k], x[j], self.w1[k])))   # (C, f)
            y = torch.addmm(self.b2[k], h, self.w2[k])                           # (C, d)
            out.append(F.gelu(y) if self.second_gelu else y)
        return self.drop(torch.stack(out))


class TopKRouter(nn.Module):
    """``logits = x W_r`` (no bias), training noise N(0, noise_std^2), softmax, top-k."""

    def __init__(self, dim: int, num_experts: int, top_k: int = 2, noise_std: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        bound = math.sqrt(6.0 / (dim + num_experts))
        nn.init.uniform_(self.weight, -bound, bound)
        self.num_experts, self.top_k = num_experts, top_k
        self.noise_std = 1.0 / num_experts if noise_std is None else noise_std

    def forward(self, tokens: torch.Tensor):
        # tokens: (T, d) -> probs (T, E) in fp32, top-k (T, k) probabilities and expert ids
        logits = F.linear(tokens.float(), self.weight.float())
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = logits.softmax(dim=-1)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)
        return probs, top_p, top_idx


def assign_slots(top_idx: torch.Tensor, num_experts: int, capacity: int):
    """Slot of every assignment in its expert's buffer, in token order.

    Args: top_idx (T, k) expert ids. Returns (mask (T, E) of pre-drop assignments,
    position (T, k) slot index, keep (T, k) bool: position < capacity).
    """
    mask = F.one_hot(top_idx, num_experts).sum(dim=1)          # (T, E), 0/1: experts are distinct
    before = torch.cumsum(mask, dim=0) - mask                  # assignments to e by earlier tokens
    position = before.gather(1, top_idx)                       # (T, k)
    return mask, position, position < capacity


def load_balance_loss(probs: torch.Tensor, mask: torch.Tensor, top_k: int) -> torch.Tensor:
    """``E * sum_i m_i c_i``; m: mean probability (T, E)->(E), c: pre-drop share of assignments."""
    num_tokens, num_experts = probs.shape
    m = probs.mean(dim=0)
    c = mask.float().sum(dim=0) / (num_tokens * top_k)
    return num_experts * (m * c).sum()


class MoE(nn.Module):
    """Top-k MoE FFN: ``(B, N, d) -> ((B, N, d), MoEStats)``.

    Args:
        dim: model width d.
        hidden: expert FFN width f.
        num_experts: E.
        top_k: experts per token (k <= E).
        capacity_factor: cf > 0 in ``C = floor(T cf k / E)``; the same in training and eval
            (official code; ColossalAI uses 2.0 in eval).
        noise_std: router noise std in training (default 1/E).
        dropout: dropout inside the experts.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int = 2,
                 capacity_factor: float = 1.2, noise_std: float | None = None,
                 dropout: float = 0.1, second_gelu: bool = True):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"an MoE layer needs at least one expert; got num_experts={num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and the number of experts "
                             f"({num_experts}); lower top_k or add experts")
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 (the paper uses 1.2); got "
                             f"{capacity_factor}")
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.router = TopKRouter(dim, num_experts, top_k, noise_std)
        self.experts = Experts(num_experts, dim, hidden, dropout, second_gelu)

    def forward(self, x: torch.Tensor):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])                              # (T, d)
        num_tokens, d = tokens.shape
        E, k = self.num_experts, self.top_k
        C = expert_capacity(num_tokens, E, k, self.capacity_factor)

        probs, top_p, top_idx = self.router(tokens)                    # (T, E), (T, k), (T, k)
        mask, position, keep = assign_slots(top_idx, E, C)
        aux = load_balance_loss(probs, mask, k)

        # dispatch: scatter kept assignments into an (E*C, d) buffer
        keep = keep.reshape(-1)                                        # (T*k,)
        slot = (top_idx * C + position).reshape(-1)[keep]              # (A,) flat slot ids
        token_id = torch.arange(num_tokens, device=x.device).repeat_interleave(k)[keep]  # (A,)
        buffer = tokens.new_zeros(E * C, d).index_add(0, slot, tokens[token_id])
        out = self.experts(buffer.view(E, C, d)).reshape(E * C, d)    # (E*C, d)
        out = out.to(tokens.dtype)              # bf16 under autocast; the residual stream is not

        # combine: weight each expert output by its raw router probability, sum per token
        weight = top_p.reshape(-1)[keep].to(out.dtype).unsqueeze(1)  # (A, 1)
        y = tokens.new_zeros(num_tokens, d).index_add(0, token_id, out[slot] * weight)
        dropped = 1.0 - keep.float().mean()
        return y.view(shape), MoEStats(aux, dropped.detach(), C)
