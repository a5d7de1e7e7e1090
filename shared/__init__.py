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
    get_logger, log0, Progress, RunDir, read_metrics, check_finite, latest_run
plot
    plot_metrics
data (deterministic, resumable batch sampler)
    EpochSampler
bench (CUDA-synchronised timers, peak memory, paper-vs-ours tables)
    Timer, time_fn, PeakMemory, SavedTensorBytes, hardware_info, write_table, print_rows,
    copy_tables_to_readme,
    ResultsConfig, results_dir
text_corpus (token corpora for the language-model papers: the Python standard library's source
by default, or nanoGPT .bin files / text files by path)
    load_corpus, Corpus, CorpusError

Modules imported on their own (``from shared import points``), for the papers that need them:

points (batched point-cloud operations, each with a slow reference used by tests and bench)
    farthest_point_sample, ball_query, knn, gather_points, group_points, three_interpolate,
    square_distance, random_rotation, yaw_rotation, random_yaw_rotation, rotate,
    normalize_unit_sphere, reference_farthest_point_sample, reference_ball_query,
    reference_knn, reference_three_interpolate
shapes (procedural categories with part labels and named keypoints; y up, deterministic by seed;
``python -m shared.shapes --category chair --out chair.png``)
    CATEGORIES, PART_NAMES, KEYPOINT_NAMES, Shape, make_shape, make_dataset, make_mesh
scenes (indoor rooms with furniture, instance/class labels and oriented boxes;
``python -m shared.scenes --seed 0 --out scene.png``)
    Scene, make_scene, box_corners, points_in_boxes, yaw_matrix
pcio (PLY/PCD/OFF/XYZ through open3d; ModelNet40, ShapeNet part, ShapeNetCore HDF5 through h5py)
    read_points, write_points, read_mesh, write_mesh, read_h5, write_h5,
    load_modelnet40_h5, load_shapenet_part_h5, load_shapenetcore_h5
render (matplotlib pictures of point clouds coloured by label or score, keypoints, segments, boxes)
    render_points, render_grid, box_edges
tp1d (Megatron 1D tensor-parallel layers, the baseline of tensor_parallel/ and seqpar/)
bench_points (``make bench-points``: point ops vs references and scipy's cKDTree)
export (``make export-<paper> DEST=dir``: one paper plus shared/, runnable on its own)
"""
from .bench import (PeakMemory, ResultsConfig, SavedTensorBytes, Timer, copy_tables_to_readme,
                    hardware_info, print_rows, results_dir, time_fn, write_table)
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
from .run import Progress, RunDir, check_finite, get_logger, latest_run, log0, read_metrics
from .seeding import RNGStreams, capture_rng_state, restore_rng_state, seed_everything
from .text_corpus import Corpus, CorpusError, load_corpus
from .topology import (MODES, Group, Topology, build_topology, check_world, coordinates, grid_rank,
                       grid_shape, group_members, single_group)

__all__ = [name for name in dir() if not name.startswith("_") and name not in {
    "bench", "checkpoint", "comm", "config", "data", "dist", "plot", "run", "seeding", "text_corpus", "topology"}]
