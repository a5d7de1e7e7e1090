"""Train BERT (MLM) with sequence parallelism, composed with data parallelism, on the shared core.

    python -m seqpar.train --preset tiny                                   # one CPU process
    torchrun --standalone --nproc-per-node 4 -m seqpar.train               # sequence parallel 4
    torchrun --standalone --nproc-per-node 4 -m seqpar.train --seq_parallel 2   # 2 seq x 2 data
    python -m seqpar.train --resume RUN                                    # continue a run

(``make train-seqpar [NPROC=4] [ARGS="--seq_parallel 2"]``.) Every rank reads the same global
batch and keeps its replica's rows and its chunk of tokens, so the run is the same, up to float
rounding, whatever the number of processes and the layout; it may resume on another layout.
The run directory holds config.json, metrics.jsonl, checkpoint.pt and curves.png.
"""
from __future__ import annotations

import torch

from shared.data.sampler import EpochSampler
from shared.errors import UsageError
from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import (StepOutput, Task, entry_point, fit, log0, parse_args,
                          reduce_metrics, start)

from .config import PRESETS, Config
from .data import MLMData, validation_batches
from .models.bert import BertConfig, BertMLM, mlm_loss_terms
from .models.gpt import GPT
from .parallel import SequenceParallelBert, mlm_loss
from .parallel_rsa import check_sequence_split
from .parallel_ulysses import check_heads


def check_layout(seq_parallel: int, world_size: int, seq_len: int,
                 layout: str = "contiguous", heads: int = 0) -> int:
    """The sequence-group size N (``--seq_parallel``, 0 = every rank), checked against the job's
    world size and the sequence length; the data-parallel replicas are ``world_size / N``."""
    n = seq_parallel or world_size
    if n > world_size or world_size % n:
        lower = n * (world_size // n)
        starts = f"{lower} or {lower + n}" if lower else f"{n} or {2 * n}"
        parts = 1 if layout == "contiguous" else 2          # zigzag: 2N chunks
        fits = [d for d in range(1, world_size + 1)
                if world_size % d == 0 and seq_len % (parts * d) == 0]
        near = sorted(sorted(fits, key=lambda d: abs(d - n))[:2])
        raise UsageError(
            f"--seq_parallel {n} does not divide this job's {world_size} process(es) (data "
            f"parallelism takes the rest): start {starts} processes, or use --seq_parallel "
            f"{' or '.join(map(str, near))}")
    check_sequence_split(seq_len, n, layout)
    if heads:                                        # all-to-all: heads split over the ranks
        check_heads(heads, n)
    return n


def build_model(cfg: Config, vocab_size: int) -> BertMLM:
    """The serial model (BERT, or GPT for ``--model gpt``), initialised from ``cfg.seed``
    (identical on every rank)."""
    seed_everything(cfg.seed)
    cls = GPT if cfg.model == "gpt" else BertMLM
    return cls(BertConfig(vocab_size=vocab_size, hidden=cfg.hidden, heads=cfg.heads,
                              layers=cfg.layers, ffn=cfg.ffn, max_len=cfg.seq_len,
                              dropout=cfg.dropout, attn_dropout=cfg.attn_dropout))


def build_optimizer(model: BertMLM, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


@torch.no_grad()
def evaluate(sp: SequenceParallelBert, batches: list, device) -> dict:
    """MLM loss (mean over masked tokens) and accuracy on the validation batches: each replica
    takes its rows, each rank its chunk; (sum, count) pairs summed over every rank (exact)."""
    was_training = sp.training
    sp.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for ids, key_mask, labels in batches:
        ids, key_mask, labels = (sp.local_rows(t).to(device) for t in (ids, key_mask, labels))
        logits = sp(sp.local_chunk(ids), key_mask)
        labels = sp.local_chunk(labels)
        loss_sum, count = mlm_loss_terms(logits, labels)
        keep = labels != -100
        correct = (logits[keep].argmax(-1) == labels[keep]).sum()
        totals += torch.stack([loss_sum.double(), correct.double(), count.double()])
    sp.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return reduce_metrics({"val_loss": (loss_sum, count), "val_acc": (correct, count)},
                          [sp.seq, sp.data], device)


class SeqparTask(Task):
    """BERT MLM with Ring Self-Attention over ``--seq_parallel`` ranks × data parallelism."""
    paper = "seqpar"
    unit = "tok"

    def __init__(self, cfg: Config, env):
        self.cfg, self.env = cfg, env
        n = check_layout(cfg.seq_parallel, env.world_size, cfg.seq_len, cfg.placement,
                         cfg.heads if cfg.attention == "ulysses" else 0)
        self.topo = build_topology("seq", grid_size=n)
        self.seq, self.data_group = self.topo["seq"], self.topo["data"]
        if cfg.batch_size % self.topo.dp_size:
            dp = self.topo.dp_size
            raise UsageError(f"--batch_size {cfg.batch_size} is not divisible by the {dp} "
                             f"data-parallel replicas ({env.world_size} processes / "
                             f"--seq_parallel {n}); use a multiple of {dp}")
        self.data = MLMData.from_config(cfg)
        if self.data.num_items("train") < cfg.batch_size:
            raise UsageError(f"the train split of {self.data.corpus.source} has "
                             f"{self.data.num_items('train')} windows of {cfg.seq_len} tokens, "
                             f"fewer than one batch of {cfg.batch_size}; use a smaller "
                             f"--batch_size or --seq_len, or more data (--max_bytes)")
        self.model = build_model(cfg, self.data.vocab_size).to(env.device)
        self.sp = SequenceParallelBert(self.model, self.topo, lean=cfg.lean, overlap=cfg.overlap,
                                       seed=cfg.seed, attention=cfg.attention,
                                       layout=cfg.placement)
        self.optimizer = build_optimizer(self.model, cfg)
        self.val = validation_batches(self.data, cfg)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        attn = "all-to-all" if self.cfg.attention == "ulysses" else \
            ("lean ring" if self.cfg.lean else "RSA")
        return (f"seqpar: {self.cfg.model} on {self.data.corpus.source}; {self.topo.dp_size} "
                f"data x {self.seq.size} sequence ({self.cfg.placement}); {attn} attention; "
                f"{n / 1e6:.2f}M parameters")

    def grad_plans(self):
        return self.sp.grad_plans()

    def metric_groups(self):
        return [self.seq, self.data_group]             # every rank holds different tokens

    def batches(self, start_step: int):
        """The global batch of each step (the same on every rank; masking keyed by the step),
        cut to this replica's rows, with the global count of masked tokens."""
        cfg = self.cfg
        sampler = EpochSampler(self.data.num_items("train"), cfg.batch_size, seed=cfg.seed)
        sampler.seek(start_step)
        for step, items in enumerate(sampler, start_step):
            ids, key_mask, labels = self.data.batch("train", items, key=step)
            count = int((labels != -100).sum())
            yield (*(self.sp.local_rows(t).to(self.env.device) for t in (ids, key_mask, labels)),
                   count)

    def step(self, batch, step: int) -> StepOutput:
        ids, key_mask, labels, global_count = batch
        self.sp.reseed(step)                           # dropout masks from (seed, step, rank)
        logits = self.sp(self.sp.local_chunk(ids), key_mask)
        loss, loss_pair = mlm_loss(logits, self.sp.local_chunk(labels), global_count)
        return StepOutput(loss, {"loss": loss_pair},
                          items=self.cfg.batch_size * self.cfg.seq_len)

    def evaluate(self) -> dict:
        return evaluate(self.sp, self.val, self.env.device)


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="seqpar")
    env = start(cfg)
    summary = fit(cfg, SeqparTask(cfg, env))
    nan = float("nan")
    log0(f"seqpar done: step {summary['step']}, train loss {summary.get('last_loss', nan):.4f}, "
         f"val loss {summary.get('val_loss', nan):.4f}, val acc {summary.get('val_acc', nan):.3f}, "
         f"{summary['seconds']:.0f} s, run {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
