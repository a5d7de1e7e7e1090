"""Train with vanilla, DisAdv or ConAdv large-batch adversarial learning (arXiv 2106.00221) on
the shared training core.

    python -m conadv.train                                   # CPU: ConAdv, resnet_tiny, minutes
    python -m conadv.train --mode disadv                     # or vanilla
    python -m conadv.train --batch_size 512 --micro_batch 64 # accumulate 8 micro-batches
    python -m conadv.train --resume runs/conadv/<run>        # continue a run, its config
    torchrun --standalone --nproc-per-node 8 -m conadv.train -- --preset resnet50_b32k \\
        --data /path/to/imagenet                             # ImageNet, ResNet-50, 8 GPUs

One step t (per rank, on its share of the global batch, in micro-batches of ``--micro_batch``):

* ``vanilla``: loss = CE(f_main(x_t), y_t);
* ``disadv``:  x_adv = FGSM(theta_t, x_t) first, then loss = CE(f_main(x_t)) + CE(f_adv(x_adv));
* ``conadv``:  (x_t, x_adv) come out of the queue, where x_adv = FGSM(theta_{t-tau}, x_t) was put
  tau steps ago; at the same time the worker attacks x_{t+tau} (the batch of step t + tau, drawn
  and augmented now, once) with a snapshot of theta_t and queues it. For t < tau the queue is
  filled from theta_0 at step 0.

``CE`` has label smoothing, ``f_main`` / ``f_adv`` route through the main / adversarial
BatchNorms, ``FGSM`` is one L-inf sign step of ``--epsilon`` (``conadv.attack``). The step
accumulates the gradients of its micro-batches (each loss divided by their number) and returns
without a loss; the core then averages the gradients over the ranks once, clips if asked, and
takes one LARS/LAMB step.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import StepOutput, Task, entry_point, fit, log0, parse_args, reduce_metrics, start
from shared.train.config import ConfigError

from .attack import AdvBatch, AdvQueue, Attacker
from .config import PRESETS, Config
from .data import build_data
from .models import create_model, route
from .optim import build_optimizer, optimizer_name, scaled_lr
from .parallel import averaged_running_stats, grad_plans


def check_batch(cfg: Config, world: int, train_size: int) -> int:
    """The per-rank micro-batch; a clear error when the global batch does not split into
    ``world`` ranks times whole micro-batches, or exceeds the data."""
    if cfg.batch_size % world:
        raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the {world} "
                          f"processes (each trains on its share); use a multiple of {world}")
    local = cfg.batch_size // world
    micro = cfg.micro_batch or local
    if local % micro:
        raise ConfigError(f"--micro_batch {micro} does not divide the per-rank batch {local} "
                          f"(--batch_size {cfg.batch_size} over {world} processes): gradient "
                          f"accumulation needs a whole number of micro-batches; use a divisor "
                          f"of {local}")
    if cfg.batch_size > train_size:
        raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the {train_size} "
                          f"training images; lower it")
    return micro


def with_epochs(cfg: Config, train_size: int) -> Config:
    """``--epochs``/``--warmup_epochs`` turned into ``--steps``/``--warmup_steps``."""
    if cfg.epochs <= 0:
        return cfg
    per_epoch = train_size // cfg.batch_size
    cfg = dataclasses.replace(cfg, steps=max(1, math.ceil(cfg.epochs * per_epoch)),
                              warmup_steps=int(cfg.warmup_epochs * per_epoch))
    cfg.validate()
    return cfg


@torch.no_grad()
def evaluate(model, data, batch_size: int, device, group=None, ranks=(0,), world: int = 1) -> dict:
    """Top-1 accuracy and CE of the main branch on every validation image, with the running
    statistics averaged over ``group``. Each of the ``world`` ranks takes images ``rank, rank +
    world, ...`` in batches of ``batch_size``; ``ranks``: the shares evaluated here (one process
    can evaluate all of a run's shares, batch for batch as the run did)."""
    was_training = model.training
    model.eval()
    correct = ce = count = 0.0
    with averaged_running_stats(model, group):
        for rank in ranks:
            for x, y in data.val_batches(batch_size, rank, world, device):
                logits = model(x).float()
                correct += (logits.argmax(-1) == y).sum().item()
                ce += F.cross_entropy(logits, y, reduction="sum").item()
                count += len(y)
    model.train(was_training)
    out = reduce_metrics({"val_acc": (correct, count), "val_loss": (ce, count),
                          "val_images": (count, 1.0)}, [group] if group else [], device)
    out["val_images"] = int(round(out["val_images"] * (group.size if group else 1)))
    return out


class ConAdvTask(Task):
    """The paper's model, data and step for :func:`shared.train.fit`."""
    best = {"best_acc": "val_acc"}
    paper = "conadv"
    unit = "img"

    def __init__(self, cfg: Config, env):
        self.env = env
        self.data_group = build_topology("data")["data"]
        world, rank = self.data_group.size, self.data_group.rank
        seed_everything(cfg.seed)
        self.data = build_data(cfg)
        self.micro = check_batch(cfg, world, self.data.train_size)
        self.cfg = cfg = with_epochs(cfg, self.data.train_size)
        self.model = create_model(cfg.model, self.data.num_classes, self.data.mean,
                                  self.data.std).to(env.device)    # same weights on every rank
        self.optimizer = build_optimizer(self.model, cfg)
        self.attacker = None
        if cfg.mode != "vanilla":
            self.attacker = Attacker(self.model, cfg.epsilon, self.micro,
                                     concurrent=cfg.concurrent and cfg.mode == "conadv")
        self.queue = AdvQueue()
        # each rank checkpoints its own running statistics (and ConAdv queue)
        self.checkpoint_per_rank = world > 1
        self.rank, self.world = rank, world

    def grad_plans(self):
        return grad_plans(self.model, self.data_group)

    # ---- data: one global batch per step (this rank's share)
    def stream(self, first_step: int):
        """The augmented batches of every step from ``first_step`` (this rank's share)."""
        return self.data.stream(first_step, self.cfg.batch_size, self.rank, self.world,
                                self.env.device)

    def batches(self, start_step: int):
        if self.cfg.mode != "conadv":
            return self.stream(start_step)
        return self._conadv_batches(start_step)

    def _conadv_batches(self, start_step: int):
        """What ConAdv's step t draws from the data: the batch of step t + tau (its clean
        images come from the queue), and at a fresh start also those of steps 0 .. tau - 1.

        A generator: its body runs at the first ``next``, after the core has restored a
        checkpoint's queue (holding steps start .. start + tau - 1), so it starts after them."""
        queued = len(self.queue)
        stream = self.stream(start_step + queued)
        yield [next(stream) for _ in range(self.cfg.tau + 1 - queued)]
        for batch in stream:
            yield [batch]

    # ---- the step
    def step(self, batch, step: int) -> StepOutput:
        cfg = self.cfg
        if cfg.mode == "conadv":
            x, y, x_adv = self._conadv_inputs(batch, step)
        elif cfg.mode == "disadv":
            x, y = batch
            x_adv = self.attacker.attack_now(x, y)           # from theta_t, before the gradient
        else:
            (x, y), x_adv = batch, None
        return self.forward_backward(x, y, x_adv)

    def _conadv_inputs(self, batch, step: int):
        self.collect()                                       # made at step - 1 for step - 1 + tau
        *first, (x_next, y_next) = batch
        for x0, y0 in first:                                 # fresh start: steps 0 .. tau - 1
            self.queue.push(AdvBatch(step + len(self.queue), step, x0, y0,
                                     self.attacker.attack_now(x0, y0)))
        item = self.queue.pop(step)
        self.attacker.launch(x_next, y_next, tag=(step + self.cfg.tau, step, x_next, y_next))
        self.consumed = item                                 # for tests and logging
        return item.images, item.labels, item.adv

    def collect(self) -> None:
        """Queue the result of the running attack, if any."""
        done = self.attacker.wait() if self.attacker is not None else None
        if done is not None:
            (target, made_at, x, y), x_adv = done
            self.queue.push(AdvBatch(target, made_at, x, y, x_adv))

    def forward_backward(self, x, y, x_adv) -> StepOutput:
        """Accumulate the gradient of the mean loss over the micro-batches (clean through the
        main BatchNorms, adversarial through the adversarial ones, weight 1 each)."""
        model, cfg, m = self.model, self.cfg, self.micro
        k = len(x) // m
        zero = torch.zeros((), device=x.device)
        # sums over the micro-batches: loss, clean CE, adversarial CE, clean / adversarial correct
        totals = torch.zeros(5, dtype=torch.float64, device=x.device)
        for i in range(k):
            xs, ys = x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]
            logits = model(xs).float()
            clean = F.cross_entropy(logits, ys, label_smoothing=cfg.label_smoothing)
            adv, adv_correct = zero, zero
            if x_adv is not None:
                with route(model, "adv"):
                    logits_adv = model(x_adv[i * m:(i + 1) * m]).float()
                adv = F.cross_entropy(logits_adv, ys, label_smoothing=cfg.label_smoothing)
                adv_correct = (logits_adv.argmax(-1) == ys).sum()
            loss = clean + adv
            (loss / k).backward()
            totals += torch.stack([loss.detach(), clean.detach(), adv.detach(),
                                   (logits.argmax(-1) == ys).sum(), adv_correct]).double()
        s = totals.tolist()                      # one device sync per step
        n = float(len(x))
        metrics = {"loss": s[0] / k, "clean_loss": s[1] / k, "acc": (s[3], n)}
        if x_adv is not None:
            metrics.update(adv_loss=s[2] / k, adv_acc=(s[4], n))
        return StepOutput(None, metrics, items=cfg.batch_size)

    # ---- evaluation and checkpoint content
    def evaluate(self) -> dict:
        return evaluate(self.model, self.data, self.micro, self.env.device, self.data_group,
                        ranks=(self.rank,), world=self.world)

    def state_dict(self) -> dict:
        self.collect()               # the attack in flight belongs to the checkpoint's queue
        return dict(super().state_dict(), queue=self.queue.state_dict())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.queue.load_state_dict(state["queue"], self.env.device)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        k = self.cfg.batch_size // (self.world * self.micro)
        return (f"{self.cfg.model}: {n / 1e6:.3f}M parameters; {self.data.name} "
                f"{self.data.train_size} train / {self.data.val_size} val images; "
                f"{optimizer_name(self.cfg).upper()} lr {scaled_lr(self.cfg):.4g} at batch "
                f"{self.cfg.batch_size} ({k} micro-batch(es) of {self.micro} per rank, BN per "
                f"micro-batch)" + (f"; tau {self.cfg.tau}, epsilon {self.cfg.epsilon:.4g}"
                                   if self.cfg.mode != "vanilla" else ""))

    def close(self) -> None:
        if self.attacker is not None:
            self.attacker.close()


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="conadv")
    env = start(cfg)
    task = ConAdvTask(cfg, env)
    try:
        summary = fit(task.cfg, task)
    finally:
        task.close()
    summary.update(mode=task.cfg.mode, model=task.cfg.model, batch_size=task.cfg.batch_size)
    if "val_acc" in summary:
        log0(f"conadv {task.cfg.mode}: test top-1 {100 * summary['val_acc']:.2f}% (best "
             f"{100 * summary['best_acc']:.2f}%), {task.cfg.model}, batch "
             f"{task.cfg.batch_size}, {summary['step']} steps in {summary['seconds']:.0f} s; "
             f"run dir {summary['run_dir']}")
    else:
        log0(f"conadv {task.cfg.mode}: stopped at step {summary['step']} of "
             f"{summary['steps']} after {summary['seconds']:.0f} s; continue with --resume "
             f"{summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
