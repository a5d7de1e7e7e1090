"""Evaluate a trained run: test top-1 of its checkpoint (main BatchNorms) on the validation split.

    python -m conadv.eval                          # the newest run under <repo>/runs/conadv
    python -m conadv.eval --run runs/conadv/<run> [--data /path/to/imagenet]
    make eval-conadv MODE=disadv                   # the newest DisAdv run

One process, whatever the run's number of processes: the model and data come from the run's
``config.json``; the weights from its ``checkpoint.pt``, or, for a data-parallel run, from its
``checkpoint-rank<r>.pt`` files (the same weights, each rank's own BatchNorm running statistics,
averaged here as the run's own evaluation averages them). The validation images are taken in the
run's shares and batches, so the result equals the run's own final evaluation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.train import EvalConfig as BaseEvalConfig
from shared.train import entry_point, load_config, parse_config, runs_root
from shared.train.restore import load_run_weights, load_weights_into
from shared.train.run import resolve_run

from .config import Config
from .data import build_data
from .models import create_model
from .train import evaluate


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--batch_size`` 0 = the run's micro-batch (the batches its own evaluation used)."""
    MODES = Config.MODES


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    run = resolve_run(runs_root(args, "conadv"), args.run, mode=args.mode)
    cfg = load_config(Config, run / "config.json")
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data)
    device = args.torch_device()
    weights, step, world = load_run_weights(run, "conadv")
    data = build_data(cfg)
    model = create_model(cfg.model, data.num_classes, data.mean, data.std)
    load_weights_into(model, weights, run, cfg.model)
    model.to(device)
    batch = args.batch_size or cfg.micro_batch or cfg.batch_size // world
    metrics = evaluate(model, data, batch, device, ranks=range(world), world=world)
    print(f"conadv {cfg.mode} {cfg.model} ({run}): test top-1 {100 * metrics['val_acc']:.2f}%, "
          f"CE {metrics['val_loss']:.4f} on {metrics['val_images']} of {data.val_size} images "
          f"(step {step}, trained on {world} process(es))", flush=True)
    return dict(metrics, run=str(run), step=step, mode=cfg.mode)


if __name__ == "__main__":
    main()
