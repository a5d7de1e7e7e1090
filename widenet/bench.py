"""Speed of the MoE layer and of the tiny models, measured in one run (``make bench-widenet``).

1. ``bench_moe_layer``: forward+backward time of the top-2 MoE layer (E=4, cf 1.2) against a
   dense FFN with the same FLOPs per token (hidden 2 x d_ff: each token visits two experts of
   width d_ff). The MoE additionally computes the empty slots of its capacity buffers
   (E*C = cf*k*T slots for T tokens), routes, dispatches and combines; the ratio shows that cost.
2. ``bench_throughput``: training tokens per second (forward, backward, LAMB step) of
   widenet_tiny, vit_moe_tiny and vit_tiny at the same batch.

The paper reports no speed numbers; these are ratios on this machine (see the tables' hardware
line). ``--smoke`` runs tiny sizes with one repeat so the tests can exercise the code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import ResultsConfig, publish, begin, time_fn, write_table
from shared.parallel.seeding import seed_everything
from shared.train import entry_point, parse_config

from .models import MoE, create_model, expert_capacity
from .models.moe import combine, dispatch
from .models.vit import Mlp

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig(ResultsConfig):
    repeat: int = 5
    batch_size: int = 128
    seed: int = 0
    threads: int = 1
    """torch CPU threads (1: stable on a shared machine); 0 = torch's default"""
    widths: str = "128,256"
    """model widths d of the MoE-vs-dense layer bench (expert FFN 4d, batch 32 x 65 tokens);
    the GPU check uses 768"""
    device: str = "cpu"
    """cpu | cuda (the layer benches; the tiny-model throughput runs on the CPU)"""
    amp: bool = False
    """bf16 autocast in the layer bench"""


def _moe_sizes(cfg: BenchConfig):
    if cfg.smoke:
        return [(64, 256, 2, 17)]
    return [(int(d), 4 * int(d), 32, 65) for d in cfg.widths.split(",")]


def bench_moe_layer(cfg: BenchConfig, device) -> list[dict]:
    rows = []
    for d, f, batch, tokens in _moe_sizes(cfg):
        moe = MoE(d, f, num_experts=4, top_k=2, capacity_factor=1.2, dropout=0.0).to(device)
        dense = Mlp(d, 2 * f, dropout=0.0).to(device)
        x = torch.randn(batch, tokens, d, device=device, requires_grad=True)

        def step_moe():
            with _autocast(cfg, device):
                y, stats = moe(x)
            (y.float().square().mean() + 0.01 * stats.aux_loss).backward()

        def step_dense():
            with _autocast(cfg, device):
                y = dense(x)
            y.float().square().mean().backward()

        t_moe = time_fn(step_moe, warmup=1, repeat=cfg.repeat)["median"]
        t_dense = time_fn(step_dense, warmup=1, repeat=cfg.repeat)["median"]
        C = expert_capacity(batch * tokens, 4, 2, 1.2)
        rows.append({"device": device.type, "precision": "bf16 autocast" if cfg.amp else "fp32",
                     "d": d, "d_ff (expert)": f, "dense hidden": 2 * f,
                     "tokens": batch * tokens, "slots (E x C)": 4 * C,
                     "MoE fwd+bwd ms": 1e3 * t_moe, "dense fwd+bwd ms": 1e3 * t_dense,
                     "MoE / dense time": t_moe / t_dense,
                     "slot FLOPs / dense FLOPs": 4 * C / (2 * batch * tokens)})
    return rows


def moe_profile(cfg: BenchConfig, device) -> list[dict]:
    """Forward + backward time of each stage of the MoE layer, each timed alone on detached
    inputs (so the stages' sum is close to, not equal to, the whole layer's time)."""
    rows = []
    for d, f, batch, tokens in _moe_sizes(cfg):
        moe = MoE(d, f, num_experts=4, top_k=2, capacity_factor=1.2, dropout=0.0).to(device)
        E, k = moe.num_experts, moe.top_k
        x = torch.randn(batch * tokens, d, device=device, requires_grad=True)
        C = expert_capacity(len(x), E, k, 1.2)
        with torch.no_grad():
            slot, keep, top_p, _ = moe.route(x, C)
            buf = dispatch(x, slot, E, C, x.dtype)
            out = moe.experts(buf)
        buf, out = buf.requires_grad_(), out.requires_grad_()
        weight = (top_p * keep).requires_grad_()
        idx = torch.where(keep, slot, 0)

        def router():
            s, kp, p, aux = moe.route(x, C)
            (p.sum() + aux).backward()

        stages = {
            "router (fp32 logits, softmax, top-k, slots, aux)": router,
            "dispatch (scatter)": lambda: dispatch(x, slot, E, C, x.dtype).sum().backward(),
            "experts (2 batched matmuls)": lambda: moe.experts(buf).sum().backward(),
            "combine (gather, weighted sum)": lambda: combine(out, idx, weight).sum().backward(),
        }

        def whole():
            y, stats = moe(x)
            (y.sum() + stats.aux_loss).backward()

        t = {name: time_fn(fn, warmup=1, repeat=cfg.repeat)["median"]
             for name, fn in stages.items()}
        total = sum(t.values())
        t_whole = time_fn(whole, warmup=1, repeat=cfg.repeat)["median"]
        for name, v in t.items():
            rows.append({"d": d, "tokens": batch * tokens, "stage": name,
                         "fwd+bwd ms": 1e3 * v, "share of the stages' sum": v / total})
        rows.append({"d": d, "tokens": batch * tokens, "stage": "whole layer (one call)",
                     "fwd+bwd ms": 1e3 * t_whole, "share of the stages' sum": t_whole / total})
    return rows


def _autocast(cfg: BenchConfig, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)


def bench_throughput(cfg: BenchConfig) -> list[dict]:
    from timm.optim import Lamb

    batch = 4 if cfg.smoke else cfg.batch_size
    rows, base = [], None
    for name in ("vit_tiny", "vit_moe_tiny", "widenet_tiny"):
        seed_everything(cfg.seed)
        model = create_model(name).train()
        opt = Lamb(model.parameters(), lr=1e-3, weight_decay=0.1, max_grad_norm=None)
        x = torch.randn(batch, 3, 32, 32)
        y = torch.randint(10, (batch,))
        tokens = batch * (model.patch_embed.num_patches + 1)

        def step():
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out.logits, y) + 0.01 * out.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = time_fn(step, warmup=1, repeat=cfg.repeat)["median"]
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()),
                     "batch": batch, "tokens/step": tokens, "step ms": 1e3 * t,
                     "tokens/s": tokens / t})
        base = base or rows[-1]["tokens/s"]
    for row in rows:
        row["tokens/s vs vit_tiny"] = row["tokens/s"] / base
    return rows


@entry_point
def main(argv=None):
    cfg = parse_config(BenchConfig, None, argv, default_preset=None)
    out = begin(cfg, RESULTS)
    torch.manual_seed(cfg.seed)
    label = "smoke sizes (code check only)" if cfg.smoke else "full sizes"
    notes = ["the paper reports no speed numbers: all columns are measured here",
             f"{label}; median of {cfg.repeat} timed repeats after one warm-up",
             f"torch threads: {torch.get_num_threads()}; CPU machines shared with other jobs "
             f"give noisy absolute times, compare the ratios"]
    device = torch.device(cfg.device)
    moe_rows = bench_moe_layer(cfg, device)
    paths = write_table(out / "bench_moe_layer", moe_rows,
                        "Top-2 MoE layer (E=4, cf 1.2) vs dense FFN of equal FLOPs per token",
                        seed=cfg.seed, notes=notes + [
                            "the MoE's experts compute E x C = cf x k x T slots, the dense FFN "
                            "k x T token-widths: with cf 1.2 the expert matmuls alone cost 1.2x "
                            "the dense ones (column 'slot FLOPs / dense FLOPs'), the floor of "
                            "the ratio"])
    prof_rows = moe_profile(cfg, device)
    paths += write_table(out / "bench_moe_profile", prof_rows,
                         "Where the MoE layer's time goes: router, dispatch, experts, combine",
                         seed=cfg.seed, notes=notes)
    if cfg.device != "cpu" or cfg.amp:      # the GPU check: the layer benches only
        for row in moe_rows + prof_rows:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        return moe_rows, prof_rows
    tp_rows = bench_throughput(cfg)
    paths += write_table(out / "bench_throughput", tp_rows,
                         "Training throughput of the tiny models (forward + backward + LAMB)",
                         seed=cfg.seed, notes=notes)
    for row in moe_rows + prof_rows + tp_rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    publish(cfg, RESULTS, paths)
    return moe_rows, tp_rows


if __name__ == "__main__":
    main()
