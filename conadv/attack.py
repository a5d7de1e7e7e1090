"""The attack branch: a one-step L-inf sign attack through the adversarial BatchNorms, run in
line (DisAdv) or beside the weight gradient on stale weights (ConAdv), and the queue that holds
ConAdv's adversarial batches until their step.

* :func:`fgsm`: ``x_adv = clamp(x + eps * sign(grad_x CE(f_adv(x), y)), 0, 1)`` per micro-batch
  (the BatchNorm statistics of the attack are those of the micro-batch that will later train on
  it), with the sign of the float32 input gradient also under bf16 autocast.
* :class:`Attacker`: keeps a *shadow* copy of the model whose parameters are a snapshot of the
  training weights, taken when an attack starts. The shadow's parameters do not require grad and
  its BatchNorm buffers are its own, so an attack leaves no gradient in the weights and does not
  touch their running statistics. :meth:`Attacker.launch` runs the attack on a worker thread
  (CPU: torch releases the GIL inside its ops, so the two branches use two cores) whose CUDA work
  goes to a second stream; :meth:`Attacker.wait` joins it. With ``concurrent=False`` the same
  attack runs in line, with the same numbers.
* :class:`AdvQueue`: ConAdv's FIFO of :class:`AdvBatch` entries (clean images, labels, their
  adversarial images, the step that consumes them and the step whose weights made them), part of
  the checkpoint so that a resumed run continues exactly.

The attack branch issues no collective: under data parallelism each rank attacks its own share,
and the gradient all-reduce of the training core sees only the weight gradient.
"""
from __future__ import annotations

import contextlib
import copy
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import route


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float,
         micro_batch: int | None = None) -> torch.Tensor:
    """One L-inf sign step of size ``epsilon`` from ``images`` (in [0, 1]) through the
    adversarial BatchNorms of ``model``, per micro-batch; returns detached images in [0, 1]."""
    micro = micro_batch or len(images)
    out = []
    with route(model, "adv"):
        for x, y in zip(images.split(micro), labels.split(micro)):
            x = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(x).float(), y)
            (grad,) = torch.autograd.grad(loss, x)
            out.append((x.detach() + epsilon * grad.float().sign()).clamp_(0.0, 1.0))
    return torch.cat(out)


def _autocast_state(device: torch.device):
    kind = device.type
    return (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))


class Attacker:
    """Attacks with a snapshot of ``model``'s weights (see the module docstring).

    Args:
        model: the training model (read, never written).
        epsilon: L-inf radius in pixel units.
        micro_batch: the attack's BatchNorm batch (the training micro-batch); None = whole batch.
        concurrent: :meth:`launch` runs on a worker thread (and a second CUDA stream on GPU).
    """

    def __init__(self, model: nn.Module, epsilon: float, micro_batch: int | None = None,
                 concurrent: bool = True):
        self.model, self.epsilon, self.micro_batch = model, epsilon, micro_batch
        self.shadow = copy.deepcopy(model).train()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self._src = list(model.parameters())
        self._dst = list(self.shadow.parameters())
        self.device = self._src[0].device
        self.concurrent = concurrent
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="conadv-attack")
                      if concurrent else None)
        self._stream = (torch.cuda.Stream(self.device)
                        if concurrent and self.device.type == "cuda" else None)
        self._pending = None

    # ---- the snapshot
    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the training weights into the shadow model (the worker must be idle)."""
        torch._foreach_copy_(self._dst, self._src)

    def attack_now(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images from the current weights, in line (DisAdv; ConAdv's first tau)."""
        self.wait_idle()
        self.snapshot()
        return fgsm(self.shadow, images, labels, self.epsilon, self.micro_batch)

    # ---- the concurrent branch
    @property
    def busy(self) -> bool:
        return self._pending is not None

    def launch(self, images: torch.Tensor, labels: torch.Tensor, tag=None) -> None:
        """Start attacking ``images`` with the weights as they are now; :meth:`wait` returns
        ``(tag, adversarial images)``. The training weights may change meanwhile."""
        if self._pending is not None:
            raise RuntimeError("an attack is already running; wait() for it first")
        self.snapshot()
        if not self.concurrent:
            self._pending = ("done", tag, fgsm(self.shadow, images, labels, self.epsilon,
                                               self.micro_batch))
            return
        ready = None
        if self._stream is not None:
            ready = torch.cuda.Event()
            ready.record()                     # after the snapshot, on the training stream
        amp = _autocast_state(self.device)
        self._pending = ("future", tag, self._pool.submit(self._run, images, labels, ready, amp))

    def _run(self, images, labels, ready, amp):
        enabled, dtype = amp
        on_cuda = self._stream is not None
        with (torch.cuda.device(self.device) if on_cuda else contextlib.nullcontext()):
            with (torch.cuda.stream(self._stream) if on_cuda else contextlib.nullcontext()):
                if ready is not None:
                    self._stream.wait_event(ready)
                with torch.autocast(self.device.type, dtype=dtype, enabled=enabled):
                    adv = fgsm(self.shadow, images, labels, self.epsilon, self.micro_batch)
                done = None
                if self._stream is not None:
                    done = torch.cuda.Event()
                    done.record(self._stream)
        return adv, done

    def wait(self):
        """``(tag, adversarial images)`` of the running attack, or None when none runs."""
        if self._pending is None:
            return None
        kind, tag, value = self._pending
        self._pending = None
        if kind == "done":
            return tag, value
        adv, done = value.result()
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            adv.record_stream(current)
        return tag, adv

    def wait_idle(self) -> None:
        if self._pending is not None:
            raise RuntimeError("collect the running attack with wait() before starting another")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass
class AdvBatch:
    """One batch of ConAdv's queue: consumed at ``step``, attacked with the weights of
    ``made_at`` (``step - tau``, or 0 for the first tau steps)."""
    step: int
    made_at: int
    images: torch.Tensor
    labels: torch.Tensor
    adv: torch.Tensor


class AdvQueue:
    """FIFO of :class:`AdvBatch` (see the module docstring)."""

    def __init__(self):
        self._items: deque[AdvBatch] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: AdvBatch) -> None:
        if self._items and item.step != self._items[-1].step + 1:
            raise RuntimeError(f"ConAdv queue out of order: step {item.step} after "
                               f"{self._items[-1].step}")
        self._items.append(item)

    def pop(self, step: int) -> AdvBatch:
        if not self._items or self._items[0].step != step:
            have = [b.step for b in self._items]
            raise RuntimeError(f"ConAdv queue holds steps {have}, but step {step} needs its "
                               f"adversarial batch")
        return self._items.popleft()

    def state_dict(self) -> list[dict]:
        return [dict(step=b.step, made_at=b.made_at, images=b.images.cpu(),
                     labels=b.labels.cpu(), adv=b.adv.cpu()) for b in self._items]

    def load_state_dict(self, state: list[dict], device) -> None:
        self._items = deque(AdvBatch(s["step"], s["made_at"], s["images"].to(device),
                                     s["labels"].to(device), s["adv"].to(device))
                            for s in state)
