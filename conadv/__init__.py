"""ConAdv: Concurrent Adversarial Learning for Large-Batch Training (Liu et al., ICLR 2022,
arXiv 2106.00221).

models/    ResNet-50 (torchvision), EfficientNet-B0 (timm) and CPU variants, with dual BatchNorm
attack.py  the one-step sign attack, the concurrent attack branch and ConAdv's queue
optim.py   LARS / LAMB (timm) with the large-batch parameter groups and learning-rate scaling
parallel.py  data parallelism: gradient plan and BatchNorm statistics over the ranks
train.py   vanilla / DisAdv / ConAdv on the shared training core; eval.py, reproduce.py, bench.py
"""
