"""WideNet training config: one dataclass, presets named after the paper's ImageNet-1K rows.

Paper recipe (arXiv 2107.11817 Table 1 hyper-parameters and the official ``submit_tpu.sh``, see
../shared/papers/widenet.md Sec. 3): 300 epochs, 30 warmup, batch 4096, LAMB lr 0.01 (linear
warmup from 1e-5, linear decay to 1e-5), weight decay 0.1, dropout 0.1, label smoothing 0.1,
mixup Beta(0.5, 0.5) on every batch, RandAugment(2, 15), clip-norm 1.0, top-2 routing, cf 1.2,
4 experts, load-balance weight 0.01, seed 42, 224x224 images, 1001 classes.

``tiny`` is the CPU preset: widenet_tiny on the generated data, a few minutes on two cores,
scaled down (32x32 images, 8k of them, 5 epochs, batch 128) and with dropout 0 and RandAugment
off (see ``_TINY`` below and the README's deviations); the rest of the recipe is the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    preset: str = "tiny"
    model: str = "widenet_tiny"        # a name from widenet.models.list_models()
    # data
    data: str = ""                     # ImageNet root (train/, val/) or CIFAR-10 root; "" = generated
    dataset: str = "auto"              # auto | generated | cifar10 | imagenet
    img_size: int = 32
    patch_size: int = 0                # 0 = the model's default
    num_classes: int = 10              # generated data / model head (ImageNet presets: 1001)
    train_size: int = 8000             # generated data only
    val_size: int = 2000               # generated data only
    workers: int = 0                   # DataLoader workers (resume is bit-exact with 0)
    # schedule and optimiser (LAMB)
    epochs: float = 5.0
    warmup_epochs: float = 1.0
    max_steps: int = 0                 # > 0: cap the schedule at this many steps (smoke runs)
    stop_at: int = 0                   # > 0: checkpoint and stop at this step, schedule unchanged
    batch_size: int = 128              # global, over all ranks
    lr: float = 4e-3
    lr_min: float = 1e-5               # warmup starts and decay ends here (official)
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    # regularisation
    dropout: float = 0.1
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.5           # Beta(alpha, alpha) mixup on every batch; 0 = off
    randaug_ops: int = 2
    randaug_magnitude: int = 15
    # MoE
    num_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.2
    aux_weight: float = 0.01           # lambda of the load-balancing loss
    # parallelism: "data" (replicate the model) or "expert" (shard experts over expert_ranks)
    mode: str = "data"
    expert_ranks: int = 0              # 0 = all ranks form one expert group
    # bookkeeping
    seed: int = 42
    eval_every: int = 0                # steps between evaluations; 0 = once per epoch
    log_every: int = 10
    out_dir: str = ""                  # runs root; "" = <repo>/runs/widenet
    run_name: str = ""                 # "" = timestamp
    resume: str = ""                   # run directory (or checkpoint file) to continue
    threads: int = 0                   # torch CPU threads; 0 = torch's default
    amp: bool = True                   # bf16 autocast on CUDA (ignored on CPU)
    quiet: bool = False                # no progress bar


_IMAGENET = dict(img_size=224, num_classes=1001, epochs=300.0, warmup_epochs=30.0,
                 batch_size=4096, lr=0.01, weight_decay=0.1, dropout=0.1, label_smoothing=0.1,
                 mixup_alpha=0.5, randaug_ops=2, randaug_magnitude=15, dataset="imagenet",
                 eval_every=3130, seed=42)

# CPU presets (scaled down, see README "Deviations"): one torch thread (the tiny matmuls gain
# little from a second one, and on a shared machine a spinning second thread makes each step
# several times slower); LAMB lr 0.01 as in the paper; no dropout and no RandAugment: with them a
# width-64 model stays at chance on the generated data for the few hundred steps a CPU run has
# (measured), while mixup 0.5, label smoothing 0.1, weight decay 0.1 and clipping are kept.
_TINY = dict(threads=1, lr=0.01, dropout=0.0, randaug_ops=0)

PRESETS = {
    "tiny": dict(_TINY, model="widenet_tiny"),
    "vit_tiny": dict(_TINY, model="vit_tiny"),
    "vit_moe_tiny": dict(_TINY, model="vit_moe_tiny"),
    "widenet_tiny": dict(_TINY, model="widenet_tiny"),
    # the paper's ImageNet-1K rows (Table 1 / official configs)
    "vit_b16": dict(_IMAGENET, model="vit_b16"),
    "vit_l16": dict(_IMAGENET, model="vit_l16"),
    "vit_moe_b": dict(_IMAGENET, model="vit_moe_b"),
    "vit_moe_l": dict(_IMAGENET, model="vit_moe_l"),
    "widenet_b": dict(_IMAGENET, model="widenet_b"),
    "widenet_l": dict(_IMAGENET, model="widenet_l"),
    "widenet_h": dict(_IMAGENET, model="widenet_h"),
    # CIFAR-10 column of the paper's hyper-parameter table. The paper does not state the patch
    # size at 32x32; patch 4 follows ColossalAI's CIFAR example (brief Sec. 5).
    "widenet_b_cifar10": dict(model="widenet_b", dataset="cifar10", img_size=32, patch_size=4,
                              num_classes=10,
                              epochs=100.0, warmup_epochs=0.0, batch_size=512, lr=0.03,
                              weight_decay=0.0, label_smoothing=0.0, mixup_alpha=0.5),
}
