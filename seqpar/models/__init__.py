"""Single-device models of the seqpar package (parallelism is applied from outside)."""
from .bert import BertConfig, BertMLM, dense_attention, mlm_loss_terms
from .gpt import GPT

__all__ = ["BertConfig", "BertMLM", "GPT", "dense_attention", "mlm_loss_terms"]
