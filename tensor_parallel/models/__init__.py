"""Serial (single-device) models; parallelism is applied from outside (tensor_parallel.parallelize)."""
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
