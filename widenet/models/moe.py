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

Mixed precision: the router (logits, noise, softmax, top-k) and the load-balancing loss run in
fp32 with autocast turned off, whatever the surrounding precision; dispatch, the experts and the
combine run in the activation dtype (bf16 under ``torch.autocast``), and the output has the input's
dtype, so it joins the residual stream unchanged.

Dispatch and combine are vectorised, with no Python loop over tokens or experts in the hot path:
every (token, choice) assignment gets a flat slot ``expert * C + position`` (dropped ones a sink
row ``E * C``); one ``index_copy`` scatters the tokens into an ``(E * C + 1, d)`` buffer whose
first ``E * C`` rows are viewed as ``(E, C, d)``; the experts run as two batched matmuls
(``baddbmm`` over the E experts, capacity-padded); one gather brings each assignment's output back
and the weighted top-k outputs are summed per token. The experts are a submodule
(``self.experts``) mapping ``(E, C, d) -> (E, C, d)``, so expert parallelism can swap it for an
all-to-all version from outside (``widenet.parallel``) without touching this file.
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
        # x: (n, C, d) -> (n, C, d); slice j goes to expert ids[j]. The per-expert parameters are
        # stacked (n, d, f) so that all experts run as one batched matmul (baddbmm).
        keys = [str(e) for e in self.ids]
        w1 = torch.stack([self.w1[k] for k in keys])                      # (n, d, f)
        b1 = torch.stack([self.b1[k] for k in keys]).unsqueeze(1)         # (n, 1, f)
        w2 = torch.stack([self.w2[k] for k in keys])                      # (n, f, d)
        b2 = torch.stack([self.b2[k] for k in keys]).unsqueeze(1)         # (n, 1, d)
        h = self.drop(F.gelu(torch.baddbmm(b1, x, w1)))                    # (n, C, f)
        y = torch.baddbmm(b2, h, w2)                                      # (n, C, d)
        return self.drop(F.gelu(y) if self.second_gelu else y)


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
        # tokens: (T, d) -> probs (T, E), top-k (T, k) probabilities and expert ids, all fp32:
        # autocast is off here, so a bf16 step routes exactly as an fp32 one would
        with torch.autocast(tokens.device.type, enabled=False):
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
    """``E * sum_i m_i c_i`` in fp32; m: mean probability (T, E)->(E), c: pre-drop share of the
    assignments."""
    num_tokens, num_experts = probs.shape
    with torch.autocast(probs.device.type, enabled=False):
        m = probs.float().mean(dim=0)
        c = mask.float().sum(dim=0) / (num_tokens * top_k)
        return num_experts * (m * c).sum()


def activation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls produce here: autocast's lower precision when it is on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def dispatch(tokens: torch.Tensor, slot: torch.Tensor, num_experts: int, capacity: int,
             dtype: torch.dtype) -> torch.Tensor:
    """Scatter the assignments into the expert buffers: tokens (T, d), slot (T, k) flat slot
    ids (dropped: ``E * C``) -> (E, C, d) in ``dtype``, empty slots zero."""
    T, k = slot.shape
    d = tokens.shape[-1]
    src = tokens.to(dtype).unsqueeze(1).expand(T, k, d).reshape(T * k, d)
    buffer = src.new_zeros(num_experts * capacity + 1, d).index_copy(0, slot.reshape(-1), src)
    return buffer[:-1].view(num_experts, capacity, d)              # the sink row is dropped


def combine(out: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gather every assignment's expert output and sum them per token, weighted: out (E, C, d),
    slot (T, k) (dropped assignments may point anywhere), weight (T, k) (0 for dropped) ->
    (T, d) in out's dtype."""
    T, k = slot.shape
    picked = out.reshape(-1, out.shape[-1]).index_select(0, slot.reshape(-1))   # (T*k, d)
    return torch.einsum("tkd,tk->td", picked.view(T, k, -1), weight.to(out.dtype))


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

    def route(self, tokens: torch.Tensor, capacity: int):
        """fp32 routing of tokens (T, d): (slot (T, k) with dropped assignments at ``E * C``,
        keep (T, k), top_p (T, k), aux loss)."""
        probs, top_p, top_idx = self.router(tokens)                    # (T, E), (T, k), (T, k)
        mask, position, keep = assign_slots(top_idx, self.num_experts, capacity)
        aux = load_balance_loss(probs, mask, self.top_k)
        slot = torch.where(keep, top_idx * capacity + position, self.num_experts * capacity)
        return slot, keep, top_p, aux

    def forward(self, x: torch.Tensor):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])                              # (T, d)
        C = expert_capacity(tokens.shape[0], self.num_experts, self.top_k, self.capacity_factor)
        slot, keep, top_p, aux = self.route(tokens, C)
        buffer = dispatch(tokens, slot, self.num_experts, C, activation_dtype(tokens))
        out = self.experts(buffer)                                     # (E, C, d)
        # a dropped assignment reads slot 0 with weight 0: its branch adds nothing
        y = combine(out, torch.where(keep, slot, 0), top_p * keep)     # (T, d)
        dropped = 1.0 - keep.float().mean()
        return y.to(x.dtype).view(shape), MoEStats(aux, dropped.detach(), C)
