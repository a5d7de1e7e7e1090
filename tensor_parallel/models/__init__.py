"""Serial (single-device) models; parallelism is applied from outside (tensor_parallel.parallel)."""
from .gpt import GPT, GPTConfig, num_parameters

__all__ = ["GPT", "GPTConfig", "num_parameters"]
