"""All-to-all sequence parallelism over heads (as in DeepSpeed-Ulysses, arXiv 2309.14509), the
rival of Ring Self-Attention, behind the same interface as :func:`seqpar.parallel_rsa.
ring_self_attention`.

Every rank holds the Q, K, V rows of its chunk, ``[B, Z, c, A]``. One all-to-all per tensor
trades the sequence split for a head split: ``[B, Z/N, L, A]``, every token of the sequence for
Z/N heads (in layout order). Ordinary attention runs locally on those heads (any kernel; here the
dense one with the layout's causal / padding / document visibility), and one all-to-all brings
the output back to ``[B, Z, c, A]``. The backward of an all-to-all is the inverse all-to-all
(:func:`shared.parallel.comm.all_to_all`), so autograd gives exact gradients.

Communication per layer and rank: 4 all-to-alls of ``B·Z·c·A`` elements forward (Q, K, V, O) and
4 backward, each sending ``(N−1)/N`` of it: ``8(N−1)/N · B·Z·c·A`` in all, against RSA's
``6(N−1) · B·Z·c·A`` (:mod:`seqpar.parallel_rsa`). The volume per rank stays constant when L and N
grow together; RSA's grows with N. The price: Z must be divisible by N (the head count caps N),
and each rank holds full-length scores for Z/N heads, ``[B, Z/N, L, L]`` (RSA: ``[B, Z, c, L]``,
the same size).
"""
from __future__ import annotations

import math

import torch

from shared.errors import UsageError
from shared.parallel.comm import all_to_all
from shared.parallel.topology import Group

from .models.bert import fill_hidden
from .parallel_rsa import WORK, Visibility, check_attention_inputs


def check_heads(heads: int, n: int) -> None:
    """All-to-all sequence parallelism splits the heads over the ranks."""
    if heads % n:
        fits = [d for d in range(1, heads + 1) if heads % d == 0]
        near = sorted(sorted(fits, key=lambda d: abs(d - n))[:2])
        raise UsageError(f"all-to-all sequence parallelism splits the {heads} heads over the "
                         f"{n} ranks of the sequence group, and {heads} is not divisible by "
                         f"{n}; use {' or '.join(map(str, near))} ranks, a head count divisible "
                         f"by {n}, or ring attention (--attention rsa)")


def ulysses_attention(q, k, v, group: Group, key_mask: torch.Tensor | None = None,
                      dropout_p: float = 0.0, causal: bool = False,
                      positions: torch.Tensor | None = None,
                      doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Same arguments and result as :func:`seqpar.parallel_rsa.ring_self_attention` (no
    ``lean``/``overlap``)."""
    vis = Visibility(key_mask, positions, causal, doc_ids)
    check_attention_inputs(q, k, v, vis, group)
    check_heads(q.shape[1], group.size)
    length = q.shape[2] * group.size
    vis = vis.prepare(length, q.shape[2], q.device)
    # [B, Z, c, A] → [B, Z/N, L, A]: scatter heads, gather the sequence
    qh, kh, vh = (all_to_all(t.contiguous(), group, scatter_dim=1, gather_dim=2)
                  for t in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))   # [B, Z/N, L, L]
    WORK["score_entries"] += scores.numel()
    full = slice(0, length)
    probs = torch.softmax(fill_hidden(scores, vis.allowed(full, full)), dim=-1)
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, dropout_p, training=True)
    out = probs.to(vh.dtype) @ vh                                            # [B, Z/N, L, A]
    return all_to_all(out.contiguous(), group, scatter_dim=2, gather_dim=1)  # [B, Z, c, A]

