"""Sequence parallelism with Ring Self-Attention (Li et al., arXiv 2105.13120, ACL 2023).

Modules: ``models`` (serial pre-LN BERT), ``parallel`` (the plan that distributes it: sequence ×
data parallel), ``parallel_rsa`` (Ring-QK / Ring-AV and the memory-lean log-sum-exp mode),
``parallel_tp1d`` (the Megatron 1D baseline), ``data`` (MLM batches), ``config``, ``train`` (on
the shared training core), ``eval``, ``memory``, ``reproduce`` (memory tables), ``bench``
(overlap and lean-mode timings).
"""
