"""Sequence parallelism with Ring Self-Attention (Li et al., arXiv 2105.13120, ACL 2023).

Modules: ``rsa`` (Ring-QK / Ring-AV and the memory-lean log-sum-exp mode), ``models`` (serial
pre-LN BERT), ``parallel`` (the sequence × data parallel wrapper), ``data`` (MLM batches),
``train``, ``eval``, ``reproduce`` (memory tables), ``bench`` (overlap and lean-mode timings).
"""
