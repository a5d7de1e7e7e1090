"""The one training core.

config: parse_config, ConfigError, save_config, load_config, config_to_dict, help_text
checkpoint: save_checkpoint, load_checkpoint, CheckpointError
run: get_logger, log0, Progress, RunDir, read_metrics, check_finite, latest_run
plot: plot_metrics
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, config_to_dict, help_text, load_config, parse_config, save_config
from .plot import plot_metrics
from .run import Progress, RunDir, check_finite, get_logger, latest_run, log0, read_metrics
