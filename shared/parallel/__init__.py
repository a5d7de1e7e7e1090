"""The ground floor: processes, groups and collectives.

dist
    init_distributed, teardown, DistEnv, spawn, SpawnError, free_port, barrier,
    is_main_process, end_process_group
topology (groups and coordinates for data, 1d, 2d, 2p5d, 3d, seq, expert parallelism)
    build_topology, Topology, Group, single_group, group_members, coordinates, grid_rank,
    grid_shape, check_world, MODES
comm (collectives as autograd Functions in conjugate pairs, with byte counters)
    copy_to_group, reduce_from_group, all_gather, reduce_scatter, split_to_group,
    gather_from_group, broadcast, reduce_to, all_to_all, ring_shift, RingExchange, raw_* helpers,
    Pending, comm_stats, reset_comm_stats, total_sent_bytes, CommMeter
seeding
    seed_everything, capture_rng_state, restore_rng_state, RNGStreams
tp1d (imported on its own): Megatron 1D tensor-parallel layers
"""
from .comm import (CommDeviceError, CommMeter, Pending, check_device, group_backend,
                   raw_all_gather_object, raw_broadcast_object, RingExchange, all_gather, all_to_all, broadcast,
                   comm_stats, copy_to_group, gather_from_group, raw_all_gather, raw_all_reduce,
                   raw_all_to_all, raw_broadcast, raw_reduce, raw_reduce_scatter, raw_ring_shift,
                   raw_split, reduce_from_group, reduce_scatter, reduce_to, reset_comm_stats,
                   ring_shift, split_to_group, total_sent_bytes)
from .dist import (DistEnv, SpawnError, barrier, end_process_group, free_port, init_distributed,
                   is_main_process, spawn, teardown)
from .seeding import RNGStreams, capture_rng_state, restore_rng_state, seed_everything
from .topology import (MODES, Group, Topology, TopologyError, build_topology, world_group, check_world, coordinates, grid_rank,
                       grid_shape, group_members, single_group)

__all__ = [n for n in dir() if not n.startswith("_") and n not in {
    "comm", "dist", "seeding", "topology"}]
