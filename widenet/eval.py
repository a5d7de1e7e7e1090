"""Evaluate a trained run: top-1 accuracy of its checkpoint on the validation split.

    python -m widenet.eval                         # the newest run under <repo>/runs/widenet
    python -m widenet.eval --run runs/widenet/<run> [--data /path/to/imagenet]
    make eval-widenet MODE=expert                  # the newest expert-parallel run

One process, whatever the mode of the run: the model, data and MoE settings come from the run's
``config.json``; the weights from its ``checkpoint.pt`` or, for an expert-parallel run, from all
its ``checkpoint-rank<r>.pt`` files, whose expert shards (saved under the serial parameter names)
together make the serial model. Each evaluation batch is routed in as many groups as the run had
processes, so the result equals the run's own final evaluation. ``--data``/``--dataset``
override where the data is read from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.errors import UsageError
from shared.train import EvalConfig as BaseEvalConfig
from shared.train import entry_point, load_config, parse_config, runs_root
from shared.train.restore import load_run_weights, load_weights_into
from shared.train.run import resolve_run

from .config import Config
from .data import build_datasets
from .nlp import is_nlp
from .train import build_model, evaluate, head_classes


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--batch_size`` 0 = the run's batch size (the last partial batch is dropped)."""
    MODES = Config.MODES
    dataset: str = ""
    """override the run's dataset kind"""


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    run = resolve_run(runs_root(args, "widenet"), args.run, mode=args.mode)
    cfg = load_config(Config, run / "config.json")
    if is_nlp(cfg.model):
        raise UsageError(f"run {run} trained the NLP model {cfg.model}; eval evaluates the vision "
                         f"models only (the NLP run's validation accuracy is in its "
                         f"metrics.jsonl); pass --run with a vision run")
    cfg = dataclasses.replace(cfg, batch_size=args.batch_size or cfg.batch_size,
                              data=args.data or cfg.data, dataset=args.dataset or cfg.dataset)
    device = args.torch_device()
    weights, step, world = load_run_weights(run, "widenet")     # expert shards: their union
    _, val_set, data_classes = build_datasets(cfg)
    model = build_model(cfg, head_classes(cfg, data_classes))
    load_weights_into(model, weights, run, cfg.model)
    model.to(device)
    metrics = evaluate(model, val_set, cfg.batch_size, device, chunks=world,
                       workers=cfg.workers)
    print(f"{cfg.model} ({run}): val top-1 {100 * metrics['val_acc']:.2f}%, "
          f"val CE {metrics['val_loss']:.4f} on {metrics['val_images']} of {len(val_set)} images "
          f"(full batches; step {step}, {cfg.mode} mode on {world} process(es))", flush=True)
    return dict(metrics, run=str(run), step=step)


if __name__ == "__main__":
    main()
