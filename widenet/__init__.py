"""WideNet: Go Wider Instead of Deeper (Xue et al., arXiv 2107.11817), with ViT and ViT-MoE.

Modules: ``models`` (registry, ViT/MoE/WideNet), ``parallel`` (expert parallelism applied from
outside), ``data`` (ImageNet folders, CIFAR-10 pickles, generated default), ``config``,
``train``, ``eval``, ``reproduce``, ``bench``.
"""
