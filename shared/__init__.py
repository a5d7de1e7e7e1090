"""shared: the only code the eight paper packages share.

Papers import ``shared``; ``shared`` imports no paper. Public API by module:

dist (start-up and teardown)
    init_distributed, teardown, DistEnv, spawn, SpawnError, free_port, barrier,
    is_main_process, main_guard
topology (process groups and coordinates for data, 1d, 2d, 2p5d, 3d, seq, expert parallelism)
    build_topology, Topology, Group, single_group, group_members, coordinates, grid_rank,
    grid_shape, check_world, MODES
comm (collectives as autograd Functions in conjugate pairs, with byte counters)
    copy_to_group, reduce_from_group, all_gather, reduce_scatter, split_to_group,
    gather_from_group, broadcast, reduce_to, all_to_all, ring_shift, RingExchange,
    raw_all_reduce, raw_all_gather, raw_reduce_scatter, raw_split, raw_broadcast, raw_reduce,
    raw_all_to_all, raw_ring_shift, Pending, comm_stats, reset_comm_stats, total_sent_bytes,
    CommMeter
seeding (seeds, RNG state capture, per-parallel-mode RNG streams for dropout)
    seed_everything, capture_rng_state, restore_rng_state, RNGStreams
config (dataclass configs, presets, --key value overrides)
    parse_config, ConfigError, save_config, load_config, config_to_dict, help_text
checkpoint (atomic, verified checkpoints)
    save_checkpoint, load_checkpoint, CheckpointError
run (logging, progress bar with throughput, run directory with metrics and plots)
    get_logger, log0, Progress, RunDir, read_metrics, check_finite
plot
    plot_metrics
data (deterministic, resumable batch sampler)
    EpochSampler
bench (CUDA-synchronised timers, peak memory, paper-vs-ours tables)
    Timer, time_fn, PeakMemory, hardware_info, write_table
text_corpus (token corpora for the language-model papers: the Python standard library's source
by default, or nanoGPT .bin files / text files by path)
    load_corpus, Corpus, CorpusError

Further modules, imported on their own because they pull in heavier dependencies, are listed in
the README (e.g. ``shared.export``).
"""
from .bench import PeakMemory, Timer, hardware_info, time_fn, write_table
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .comm import (CommMeter, Pending, RingExchange, all_gather, all_to_all, broadcast,
                   comm_stats, copy_to_group, gather_from_group, raw_all_gather, raw_all_reduce,
                   raw_all_to_all, raw_broadcast, raw_reduce, raw_reduce_scatter, raw_ring_shift,
                   raw_split, reduce_from_group, reduce_scatter, reduce_to, reset_comm_stats,
                   ring_shift, split_to_group, total_sent_bytes)
from .config import ConfigError, config_to_dict, help_text, load_config, parse_config, save_config
from .data import EpochSampler
from .dist import (DistEnv, SpawnError, barrier, free_port, init_distributed, is_main_process,
                   main_guard, spawn, teardown)
from .plot import plot_metrics
from .run import Progress, RunDir, check_finite, get_logger, log0, read_metrics
from .seeding import RNGStreams, capture_rng_state, restore_rng_state, seed_everything
from .text_corpus import Corpus, CorpusError, load_corpus
from .topology import (MODES, Group, Topology, build_topology, check_world, coordinates, grid_rank,
                       grid_shape, group_members, single_group)

__all__ = [name for name in dir() if not name.startswith("_") and name not in {
    "bench", "checkpoint", "comm", "config", "data", "dist", "plot", "run", "seeding", "text_corpus", "topology"}]
