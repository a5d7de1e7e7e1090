"""Multi-dimensional tensor parallelism for transformer training: Megatron 1D (baseline,
shared/parallel/tp1d.py), Optimus 2D (arXiv 2104.05343), Tesseract 2.5D (arXiv 2105.14500) and
3D (arXiv 2105.14450). See README.md.

    from tensor_parallel import GPT, GPTConfig, build_parallel, parallelize, serial_state_dict
"""
from .models import GPT, GPTConfig
from .parallel import (MODES, build_parallel, check_shapes, parallelize, serial_state_dict,
                       to_serial)

__all__ = ["GPT", "GPTConfig", "MODES", "build_parallel", "check_shapes", "parallelize",
           "serial_state_dict", "to_serial"]
