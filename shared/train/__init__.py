"""The one training core that every paper uses.

config: TrainConfig (the glossary of field names and flags), EvalConfig (eval.py's flags), parse_config, ConfigError,
    save_config, load_config, config_to_dict, help_text
cli: entry_point (one-line errors, exit 2), parse_args (config + ``--resume``), start, runs_root
loop: Task, StepOutput, fit, reduce_metrics
gradients: GradSync, NormPart, sync_gradients, global_grad_norm, clip_gradients, replicated_plan
schedule: build_scheduler, lr_curve
checkpoint: save_checkpoint, load_checkpoint, CheckpointError, save_sharded, load_sharded
    (torch.distributed.checkpoint), remove_shards
run: RunDir, Progress, log0, get_logger, read_metrics, check_finite, NonFiniteLoss,
    latest_run, resolve_run, checkpoint_files, new_run_path
plot: plot_metrics
"""
from .checkpoint import (CheckpointError, load_checkpoint, load_sharded, remove_shards,
                         save_checkpoint, save_sharded)
from .cli import entry_point, parse_args, runs_root, start
from .config import (ConfigError, EvalConfig, TrainConfig, config_to_dict, help_text, load_config,
                     parse_config, save_config, with_defaults)
from .gradients import (GradSync, NormPart, clip_gradients, global_grad_norm, replicated_plan,
                        sync_gradients)
from .loop import StepOutput, Task, fit, reduce_metrics
from .plot import plot_metrics
from .run import (NonFiniteLoss, Progress, RunDir, check_finite, checkpoint_files, get_logger,
                  latest_run, log0, new_run_path, read_metrics, resolve_run)
from .schedule import build_scheduler, lr_curve
