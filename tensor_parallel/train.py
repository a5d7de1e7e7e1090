"""Train the GPT language model with 1D / 2D / 2.5D / 3D tensor parallelism, on the shared
training core (shared.train).

    python -m tensor_parallel.train                                  # tiny preset, one CPU process
    torchrun --standalone --nproc-per-node 4 -m tensor_parallel.train --mode 2d
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.train --mode 2p5d --depth 2
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.train --mode 3d
    make train-tensor_parallel MODE=2d NPROC=4 [DATA=/path/to/corpus] [ARGS="--steps 100"]
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.train -- --mode 2d --dp 2
    torchrun --standalone --nproc-per-node 2 -m tensor_parallel.train -- --resume RUN --mode 1d

(Under torchrun, ``--`` ends torchrun's own options; without it torchrun reads ``--run`` as its
``--run-path``.)

Every rank allocates and initialises only its own pieces, with the values of the serial model of
the same seed (``parallel.build_parallel``). All ranks read the same global batch; the model
splits it (over ``--dp`` data replicas, then over the grid). A checkpoint is sharded (``torch.distributed.checkpoint``,
written by the training core): every rank writes its own pieces of the weights and AdamW
moments, described as pieces of the serial tensors, into ``shards-step<N>-<tag>/``, and
``checkpoint.pt`` names that directory. So a run resumes under another mode or world size
(``--resume RUN --mode M``), and ``tensor_parallel.eval`` / ``tensor_parallel.convert`` read it
under any grid or in one process.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from shared.data import EpochSampler
from shared.errors import UsageError
from shared.parallel import RNGStreams, seed_everything
from shared.train import (ConfigError, StepOutput, Task, checkpoint_files, entry_point, fit,
                          load_checkpoint, load_sharded, log0, parse_args, start)

from .config import PRESETS, Config
from .data import CorpusError, load_corpus, padded_vocab
from .models import GPT, GPTConfig, num_parameters
from .parallel import build_grid, build_parallel, check_shapes, set_streams

PAPER = "tensor_parallel"
CKPT_FORMAT = "tensor_parallel/sharded-v2"


def model_config(cfg: Config) -> GPTConfig:
    return GPTConfig(vocab_size=cfg.vocab_size, seq_len=cfg.seq_len, hidden=cfg.hidden,
                     heads=cfg.heads, layers=cfg.layers, dropout=cfg.dropout)


def make_optimizer(pmodel, cfg: Config) -> torch.optim.AdamW:
    """AdamW; matrices (≥2-D pieces, the same set in every mode) get weight decay."""
    decay = [p for p in pmodel.parameters() if p.dim() >= 2]
    other = [p for p in pmodel.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=(0.9, 0.95))


@torch.no_grad()
def evaluate_loss(pmodel, corpus, cfg: Config, device, split: str = "val") -> float:
    """Mean loss over ``eval_batches`` fixed, evenly spaced windows of ``split``."""
    was = pmodel.training
    pmodel.eval()
    n = corpus.num_windows(split, cfg.seq_len)
    starts = torch.linspace(0, n - 1, cfg.eval_batches * cfg.batch_size).long()
    losses = []
    for chunk in starts.split(cfg.batch_size):
        x, y = corpus.lm_batch(split, chunk, cfg.seq_len)
        losses.append(pmodel(x.to(device), y.to(device))[1].item())
    pmodel.train(was)
    return sum(losses) / len(losses)


def load_data(cfg: Config, topo):
    """The corpus, and the model vocabulary it needs (``cfg.vocab_size`` filled in when 0)."""
    corpus = load_corpus(cfg.data or None, max_bytes=cfg.max_bytes)
    if not cfg.vocab_size:
        cfg.vocab_size = padded_vocab(corpus.vocab_size, cfg.vocab_multiple, topo)
    elif cfg.vocab_size < corpus.vocab_size:
        raise ConfigError(f"--vocab_size {cfg.vocab_size} is smaller than the corpus's "
                          f"vocabulary ({corpus.vocab_size}); use 0 (the corpus's, padded)")
    for split, need in (("train", cfg.batch_size), ("val", 1)):
        n = corpus.num_windows(split, cfg.seq_len)
        if n < need:
            raise CorpusError(f"the {split} split of {corpus.source} has {n} windows of "
                              f"--seq_len {cfg.seq_len} + 1 tokens, fewer than the {need} it "
                              f"needs; use more data or a smaller --seq_len"
                              + (" or --batch_size" if split == "train" else ""))
    return corpus


class LMTask(Task):
    """The tensor-parallel GPT on the core: one global batch per step, read by every rank."""
    paper = PAPER
    unit = "tok"

    def __init__(self, cfg: Config, env):
        self.cfg, self.env = cfg, env
        self.topo = build_grid(cfg.mode, cfg.depth, dp=cfg.dp)
        self.data_group = self.topo["data"]
        self.corpus = load_data(cfg, self.topo)
        self.gcfg = model_config(cfg)
        check_shapes(self.gcfg, self.topo, cfg.batch_size)
        seed_everything(cfg.seed)
        self.model = build_parallel(self.gcfg, self.topo, env.device)   # only this rank's pieces
        self.model.set_checkpointing(cfg.checkpoint_activations)
        self.model.set_regather(cfg.regather)
        self.optimizer = make_optimizer(self.model, cfg)

    def describe(self) -> str:
        shape = ", ".join(f"{k}={v}" for k, v in self.topo.shape.items())
        n = num_parameters(self.gcfg)
        dp = f" × {self.topo.dp_size} data replicas" if self.topo.dp_size > 1 else ""
        return (f"{PAPER}: grid {shape}{dp}, {n / 1e6:.2f}M parameters (serial), corpus: "
                f"{self.corpus.source}")

    # ---- data and step
    def batches(self, start_step: int):
        sampler = EpochSampler(self.corpus.num_windows("train", self.cfg.seq_len),
                               self.cfg.batch_size, seed=self.cfg.seed).seek(start_step)
        for idx in sampler:
            yield self.corpus.lm_batch("train", idx, self.cfg.seq_len)

    def step(self, batch, step: int) -> StepOutput:
        cfg, device = self.cfg, self.env.device
        # dropout streams re-seeded from (seed, step): a resumed run draws the same masks
        set_streams(self.model, RNGStreams(cfg.seed + 7919 * step, self.topo.grid_rank,
                                           self.topo.coords["data"]))
        x, y = batch
        _, loss = self.model(x.to(device), y.to(device))
        return StepOutput(loss, {"loss": loss.detach()}, items=cfg.batch_size * cfg.seq_len)

    def grad_plans(self):
        # the sum over the data replicas; the layers already reduce what the grid needs (e.g.
        # the 2.5D depth all-reduce). Clipping uses the serial model's norm.
        return self.model.grad_plans()

    def metric_groups(self):
        return []                       # the model's loss is already the global batch's

    def evaluate(self) -> dict:
        return {"val_loss": evaluate_loss(self.model, self.corpus, self.cfg, self.env.device)}

    # ---- checkpoints: torch.distributed.checkpoint shards (the core writes and reads them)
    def sharded_state_dict(self) -> dict:
        return self.model.sharded_state_dict(self.optimizer)

    def load_sharded_state_dict(self, state: dict) -> None:
        for p in self.model.parameters():            # the moments were loaded in place
            self.optimizer.state[p]["step"] = state["optim.step"].clone()

    def state_dict(self) -> dict:
        return {"format": CKPT_FORMAT, "gpt_config": dataclasses.asdict(self.gcfg),
                "mode": self.cfg.mode, "world": self.topo.world_size, "dp": self.topo.dp_size}

    def load_state_dict(self, state: dict) -> None:
        check_format(state)
        if GPTConfig(**state["gpt_config"]) != self.gcfg:
            raise UsageError(f"the checkpoint's model {state['gpt_config']} differs from this "
                             f"run's {dataclasses.asdict(self.gcfg)}; resume without changing "
                             f"the model's sizes")


def check_format(state: dict) -> None:
    """A training checkpoint's task state of this paper, or one clear error."""
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UsageError(f"not a tensor_parallel training checkpoint (format {found!r}, "
                         f"expected {CKPT_FORMAT!r}); give the run directory of a "
                         f"tensor_parallel.train run")


def read_run(run_path):
    """A run's checkpoint: (the core's state from ``checkpoint.pt``, the GPTConfig, the
    directory of its shards), or one clear error."""
    files = checkpoint_files(run_path)
    if not files or files[0].name != "checkpoint.pt":
        raise UsageError(f"{run_path} has no checkpoint.pt of a tensor_parallel run")
    state = load_checkpoint(files[0])
    if state.get("paper") != PAPER:
        raise UsageError(f"{files[0]} is a checkpoint of {state.get('paper')!r}, not of "
                         f"{PAPER!r}; use that paper's tools")
    check_format(state["task"])
    return state, GPTConfig(**state["task"]["gpt_config"]), Path(run_path) / state["shards"]


def load_weights(model, shards) -> None:
    """Fill a :class:`ParallelGPT` (this rank's pieces, any mode) or a serial :class:`GPT` in
    place from a run's shards (collective in the former case)."""
    if isinstance(model, GPT):
        dest = {f"model.{k}": v for k, v in model.state_dict().items()}
    else:
        dest = {k: v for k, v in model.sharded_state_dict().items() if k.startswith("model.")}
    load_sharded(dest, shards)


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper=PAPER)
    env = start(cfg)
    task = LMTask(cfg, env)
    initial = None if cfg.resume else task.evaluate()["val_loss"]
    summary = fit(cfg, task)
    summary["initial_val_loss"] = initial
    val = summary.get("val_loss")
    log0(f"{PAPER}: mode {cfg.mode} on {env.world_size} rank(s), step {summary['step']}/"
         f"{cfg.steps}: val loss " + (f"{val:.4f}" if val is not None else "(at the end)")
         + (f" (initial {initial:.4f})" if initial is not None else "")
         + f", {summary['seconds']:.1f} s, run {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
