"""The NLP half of WideNet (arXiv 2107.11817 v3): ALBERT-style pre-training (masked language
model + sentence-order prediction) and sentence-classification fine-tuning, on the shared
training core.

    python -m widenet.train --model widenet_nlp_tiny          # pre-train, then fine-tune
    python -m widenet.train --model widenet_nlp_tiny --nlp_stage finetune --data /path/SST-2

Data:

* pre-training (``generated_corpus``): a deterministic token stream from a sparse Markov chain
  (every token has 3 likely successors), so a masked token is predictable from its context.
  Each example is ``[CLS] A [SEP] B [SEP]`` with A, B consecutive segments, swapped with
  probability 1/2 (the sentence-order label); 15% of the segment tokens are masked (80% [MASK],
  10% random, 10% kept), as BERT/ALBERT.
* fine-tuning: a GLUE task in its TSV layout from ``--data`` (``train.tsv``, ``dev.tsv``; SST-2
  ``sentence, label`` or MNLI ``sentence1, sentence2, gold_label``), words hashed into the
  vocabulary (no pretrained tokenizer here); otherwise a generated task that needs word order:
  every sequence holds the two marker tokens once each among random filler, and the label says
  whether marker A comes before marker B (a bag of words is at chance).

SQuAD fine-tuning (span extraction) is not implemented.
"""
from __future__ import annotations

import csv
import dataclasses
import re
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.data import EpochSampler
from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import StepOutput, Task, fit, log0
from shared.train.config import ConfigError

from .data import DataError
from .models import count_parameters, create_model
from .models.albert import encoder_parameters
from .train import build_optimizer

PAD, CLS, SEP, MASK, FIRST = 0, 1, 2, 3, 4          # special token ids; words from FIRST on


def is_nlp(model: str) -> bool:
    return model.startswith(("albert", "widenet_nlp"))


# ---------------------------------------------------------------------------------------------
# data

def generated_corpus(step: int, batch: int, seq_len: int, vocab: int, seed: int,
                     mask_prob: float = 0.15, split: int = 0) -> dict:
    """One deterministic MLM + SOP batch for ``step`` (the same on every rank)."""
    if seq_len < 8 or vocab < FIRST + 8:
        raise ConfigError(f"the generated corpus needs --seq_len >= 8 and a vocabulary of >= "
                          f"{FIRST + 8}; got {seq_len} and {vocab}")
    table = torch.Generator().manual_seed(seed)
    words = vocab - FIRST
    succ = torch.randint(words, (words, 3), generator=table)       # the chain: 3 successors
    g = torch.Generator().manual_seed(seed * 7919 + split * 104729 + step)
    n = seq_len - 3
    cur = torch.randint(words, (batch,), generator=g)
    chain = []
    for _ in range(n):
        chain.append(cur)
        nxt = succ[cur, torch.randint(3, (batch,), generator=g)]
        jump = torch.rand(batch, generator=g) < 0.1
        cur = torch.where(jump, torch.randint(words, (batch,), generator=g), nxt)
    text = torch.stack(chain, 1) + FIRST                             # (B, n)
    la = n // 2
    a, b = text[:, :la], text[:, la:]
    swap = torch.rand(batch, generator=g) < 0.5
    # with a swap the first segment is B (length n - la): lay out [CLS] s1 [SEP] s2 [SEP]
    ids = torch.full((batch, seq_len), PAD)
    ids[:, 0] = CLS
    body = torch.where(swap[:, None], torch.cat([b, a], 1), torch.cat([a, b], 1))
    len1 = torch.where(swap, torch.tensor(n - la), torch.tensor(la))
    pos = torch.arange(n)[None, :]
    shift = (pos >= len1[:, None]).long()                          # tokens after the first SEP
    ids.scatter_(1, 1 + pos + shift, body)
    ids.scatter_(1, (1 + len1)[:, None], SEP)
    ids[:, -1] = SEP
    segments = (torch.arange(seq_len)[None, :] > (1 + len1)[:, None]).long()
    # masking: 15% of the text tokens; 80% [MASK], 10% random word, 10% unchanged
    is_text = ids >= FIRST
    chosen = is_text & (torch.rand(ids.shape, generator=g) < mask_prob)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=g)
    rand_words = torch.randint(words, ids.shape, generator=g) + FIRST
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_words, inputs)
    return dict(ids=inputs, segments=segments, pad_mask=torch.ones_like(ids, dtype=torch.bool),
                mlm_labels=labels, sop_labels=swap.long())


def order_task(n: int, seq_len: int, vocab: int, seed: int, split: int) -> dict:
    """Generated sentence classification that needs word order: markers FIRST and FIRST+1 once
    each among filler words; label 1 when FIRST comes first."""
    g = torch.Generator().manual_seed(seed * 7919 + 31 + split)
    L = seq_len - 2
    filler = torch.randint(FIRST + 2, vocab, (n, L), generator=g)
    perm = torch.rand(n, L, generator=g).argsort(1)[:, :2]        # two distinct positions
    filler.scatter_(1, perm[:, :1], FIRST)
    filler.scatter_(1, perm[:, 1:], FIRST + 1)
    ids = torch.cat([torch.full((n, 1), CLS), filler, torch.full((n, 1), SEP)], 1)
    label = (perm[:, 0] < perm[:, 1]).long()
    return dict(ids=ids, segments=torch.zeros_like(ids),
                pad_mask=torch.ones_like(ids, dtype=torch.bool), labels=label)


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
MNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def _encode(text: str, vocab: int) -> list[int]:
    return [FIRST + zlib.crc32(w.encode()) % (vocab - FIRST) for w in _WORD.findall(text.lower())]


def read_glue(path: Path, seq_len: int, vocab: int) -> tuple[dict, int]:
    """A GLUE TSV file (SST-2: sentence, label; MNLI: sentence1, sentence2, gold_label) ->
    padded tensors and the number of classes."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise DataError(f"{path} has no rows under its header")
    cols = set(rows[0])
    if {"sentence", "label"} <= cols:
        pairs = [(r["sentence"], None, int(r["label"])) for r in rows]
        classes = 2
    elif {"sentence1", "sentence2", "gold_label"} <= cols:
        pairs = [(r["sentence1"], r["sentence2"], MNLI_LABELS[r["gold_label"]]) for r in rows
                 if r["gold_label"] in MNLI_LABELS]
        classes = 3
    else:
        raise DataError(f"{path}: expected a GLUE TSV header with 'sentence' and 'label' (SST-2) "
                        f"or 'sentence1', 'sentence2', 'gold_label' (MNLI); found {sorted(cols)}")
    n = len(pairs)
    ids = torch.full((n, seq_len), PAD)
    seg = torch.zeros(n, seq_len, dtype=torch.long)
    for i, (s1, s2, _) in enumerate(pairs):
        a = [CLS] + _encode(s1, vocab)[:seq_len - 3] + [SEP]
        b = (_encode(s2, vocab) + [SEP]) if s2 is not None else []
        toks = (a + b)[:seq_len]
        ids[i, :len(toks)] = torch.tensor(toks)
        seg[i, len(a):len(toks)] = 1
    labels = torch.tensor([p[2] for p in pairs])
    return dict(ids=ids, segments=seg, pad_mask=ids != PAD, labels=labels), classes


def finetune_data(cfg) -> tuple[dict, dict, int]:
    vocab = _vocab(cfg)
    if cfg.data:
        root = Path(cfg.data)
        for name in ("train.tsv", "dev.tsv"):
            if not (root / name).is_file():
                raise DataError(f"GLUE layout expected {root / name} (train.tsv and dev.tsv); "
                                f"it does not exist")
        train, classes = read_glue(root / "train.tsv", cfg.seq_len, vocab)
        val, _ = read_glue(root / "dev.tsv", cfg.seq_len, vocab)
        return train, val, classes
    return (order_task(cfg.train_size, cfg.seq_len, vocab, cfg.seed, 1),
            order_task(cfg.val_size, cfg.seq_len, vocab, cfg.seed, 2), 2)


def _vocab(cfg) -> int:
    with torch.device("meta"):
        return create_model(cfg.model).encoder.word.num_embeddings


# ---------------------------------------------------------------------------------------------
# the task

class TextTask(Task):
    """ALBERT/WideNet-NLP pre-training (``stage="pretrain"``: MLM + SOP) or fine-tuning
    (``stage="finetune"``: [CLS] pooled classification), data parallel."""
    best = {"best_acc": "val_acc"}
    paper = "widenet"
    unit = "seq"

    def __init__(self, cfg, env, stage: str, init: dict | None = None):
        if cfg.mode != "data":
            raise ConfigError(f"the NLP models train with --mode data; --mode {cfg.mode} is not "
                              f"implemented for {cfg.model}")
        self.cfg, self.env, self.stage = cfg, env, stage
        self.topo = build_topology("data")
        self.data_group = self.topo["data"]
        world = env.world_size
        if cfg.batch_size % world:
            raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the {world} "
                              f"processes; use a multiple of {world}")
        seed_everything(cfg.seed)
        self.vocab = _vocab(cfg)
        classes = 2
        if stage == "finetune":
            self.train, self.val, classes = finetune_data(cfg)
            if len(self.train["labels"]) < cfg.batch_size:
                raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the "
                                  f"{len(self.train['labels'])} training sequences; lower it")
        kw = dict(dropout=cfg.dropout, num_labels=classes)
        if "widenet" in cfg.model:
            kw.update(num_experts=cfg.num_experts, top_k=cfg.top_k,
                      capacity_factor=cfg.capacity_factor)
        self.model = create_model(cfg.model, **kw).to(env.device)
        if init is not None:                        # pre-trained weights, fresh task heads
            own = self.model.state_dict()
            self.model.load_state_dict({k: v for k, v in init.items()
                                        if k in own and own[k].shape == v.shape and
                                        not k.startswith("classifier")}, strict=False)
        self.n_params = encoder_parameters(self.model)
        seed_everything(cfg.seed + 1000 * env.rank)
        self.optimizer = build_optimizer(self.model, cfg)

    def batches(self, start_step: int):
        cfg, env, dev = self.cfg, self.env, self.env.device
        share = cfg.batch_size // env.world_size
        lo = env.rank * share
        if self.stage == "pretrain":
            step = start_step
            while True:
                b = generated_corpus(step, cfg.batch_size, cfg.seq_len, self.vocab, cfg.seed)
                yield {k: v[lo:lo + share].to(dev) for k, v in b.items()}
                step += 1
        sampler = EpochSampler(len(self.train["labels"]), cfg.batch_size, seed=cfg.seed,
                               rank=env.rank, world=env.world_size).seek(start_step)
        for idx in sampler:
            yield {k: v[idx].to(dev) for k, v in self.train.items()}

    def _loss(self, b):
        out = self.model(b["ids"], b["segments"], b["pad_mask"])
        if self.stage == "pretrain":
            logits = self.model.mlm_logits(out.hidden).float()
            mlm = F.cross_entropy(logits.flatten(0, 1), b["mlm_labels"].flatten(),
                                  ignore_index=-100)
            sop = F.cross_entropy(self.model.sop(out.pooled).float(), b["sop_labels"])
            return mlm + sop, out, {"mlm": mlm.detach(), "sop": sop.detach()}
        ce = F.cross_entropy(self.model.classifier(out.pooled).float(), b["labels"])
        return ce, out, {"ce": ce.detach()}

    def step(self, batch, step: int) -> StepOutput:
        task_loss, out, metrics = self._loss(batch)
        loss = task_loss + self.cfg.aux_weight * out.aux_loss
        metrics.update(loss=loss.detach(), aux=out.aux_loss.detach())
        if out.dropped:
            metrics["dropped"] = torch.stack(out.dropped).mean()
        return StepOutput(loss, metrics, items=self.cfg.batch_size)

    @torch.no_grad()
    def evaluate(self) -> dict:
        cfg, env = self.cfg, self.env
        was = self.model.training
        self.model.eval()
        correct = total = 0.0
        if self.stage == "pretrain":                # held-out MLM accuracy (split 1)
            for i in range(4):
                b = generated_corpus(i, cfg.batch_size, cfg.seq_len, self.vocab, cfg.seed,
                                     split=1)
                b = {k: v.to(env.device) for k, v in b.items()}
                out = self.model(b["ids"], b["segments"], b["pad_mask"])
                pred = self.model.mlm_logits(out.hidden).argmax(-1)
                m = b["mlm_labels"] != -100
                correct += (pred[m] == b["mlm_labels"][m]).sum().item()
                total += m.sum().item()
            key = "val_mlm_acc"
        else:
            v = {k: t.to(env.device) for k, t in self.val.items()}
            for s in range(0, len(v["labels"]), cfg.batch_size):
                b = {k: t[s:s + cfg.batch_size] for k, t in v.items()}
                out = self.model(b["ids"], b["segments"], b["pad_mask"])
                pred = self.model.classifier(out.pooled).argmax(-1)
                correct += (pred == b["labels"]).sum().item()
                total += len(pred)
            key = "val_acc"
        self.model.train(was)
        return {key: correct / max(total, 1)}

    def describe(self) -> str:
        return (f"{self.cfg.model} ({self.stage}): {self.n_params / 1e6:.3f}M encoder "
                f"parameters, {count_parameters(self.model) / 1e6:.3f}M with the heads")


def run_nlp(cfg, env) -> dict:
    """``--nlp_stage both``: pre-train (MLM + SOP), then fine-tune from those weights in a run
    directory named ``<run>-finetune``; ``pretrain`` / ``finetune``: one stage."""
    summary, init = {}, None
    if cfg.nlp_stage in ("both", "pretrain"):
        pre_cfg = dataclasses.replace(cfg, nlp_stage="pretrain")
        task = TextTask(pre_cfg, env, "pretrain")
        summary = fit(pre_cfg, task)
        summary.update(pretrain_mlm_acc=summary.get("val_mlm_acc"), params=task.n_params)
        log0(f"{cfg.model} pre-training: held-out MLM accuracy "
             f"{100 * summary.get('val_mlm_acc', float('nan')):.2f}%; run {summary['run_dir']}")
        init = {k: v.detach().cpu() for k, v in task.model.state_dict().items()}
        if cfg.nlp_stage == "pretrain":
            return summary
    ft_cfg = dataclasses.replace(cfg, nlp_stage="finetune")
    if summary:
        run_dir = Path(summary["run_dir"])
        ft_cfg = dataclasses.replace(ft_cfg, run=run_dir.name + "-finetune",
                                     out_dir=str(run_dir.parent), resume="")
    task = TextTask(ft_cfg, env, "finetune", init)
    ft = fit(ft_cfg, task)
    log0(f"{cfg.model} fine-tuning: val accuracy {100 * ft.get('val_acc', float('nan')):.2f}% "
         f"(best {100 * ft.get('best_acc', float('nan')):.2f}%); run {ft['run_dir']}")
    return dict(ft, pretrain=summary, params=task.n_params, model=cfg.model)
