"""Topology: rank <-> coordinate maps and group membership for every mode (pure math, no
processes; the process groups themselves are exercised in test_comm.py)."""
import pytest

from shared.parallel import topology as T


def _partition_ok(groups, world):
    flat = sorted(r for g in groups for r in g)
    return flat == list(range(world))


@pytest.mark.parametrize("mode,world,grid,depth", [
    ("data", 6, None, 1), ("1d", 6, 3, 1), ("2d", 4, None, 1), ("2d", 18, 9, 1),
    ("2p5d", 4, None, 1), ("2p5d", 8, None, 2), ("2p5d", 16, 8, 2), ("3d", 8, None, 1),
    ("3d", 27, None, 1), ("seq", 6, 3, 1), ("expert", 4, 2, 1),
])
def test_every_family_partitions_the_world_and_coords_round_trip(mode, world, grid, depth):
    members = T.group_members(mode, world, grid, depth)
    grid = T.check_world(mode, world, grid, depth)
    for family, groups in members.items():
        assert _partition_ok(groups, world), (family, groups)
        assert len({len(g) for g in groups}) == 1, f"{family} groups differ in size"
    for t in range(grid):
        c = T.coordinates(mode, t, grid, depth)
        assert T.grid_rank(mode, c, grid, depth) == t
    assert members["data"] == [tuple(d * grid + t for d in range(world // grid)) for t in range(grid)]


def test_2d_rows_and_columns():
    m = T.group_members("2d", 9)
    # t = r*q + c ; row = same r (varying c), col = same c (varying r)
    assert m["row"] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    assert m["col"] == [(0, 3, 6), (1, 4, 7), (2, 5, 8)]
    assert T.coordinates("2d", 5, 9) == {"r": 1, "c": 2}


def test_2p5d_depth_two():
    m = T.group_members("2p5d", 8, depth=2)
    # t = c + q*r + q^2*k with q = 2, d = 2
    assert sorted(m["row"]) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert sorted(m["col"]) == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert sorted(m["dep"]) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    # xz: fixed c, local index r + q*k  ->  ranks of c=0 ordered (r,k)=(0,0),(1,0),(0,1),(1,1)
    assert sorted(m["xz"]) == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert T.coordinates("2p5d", 6, 8, 2) == {"c": 0, "r": 1, "k": 1}


def test_3d_q2_groups():
    m = T.group_members("3d", 8)
    # t = i + q*j + q^2*k
    assert sorted(m["weight"]) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert sorted(m["input"]) == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert sorted(m["output"]) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert sorted(m["input_x_weight"]) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert sorted(m["output_x_weight"]) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert T.coordinates("3d", 6, 8) == {"i": 0, "j": 1, "k": 1}


def test_model_grid_combined_with_data_parallel():
    m = T.group_members("2d", 8, grid_size=4)
    assert sorted(m["row"]) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert m["data"] == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert m["tensor"] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    m = T.group_members("seq", 4, grid_size=2)
    assert m["seq"] == [(0, 1), (2, 3)] and m["data"] == [(0, 2), (1, 3)]


def test_single_process_topology_has_groups_of_one():
    topo = T.build_topology("2d", world_size=1, rank=0)
    assert topo.groups["row"].size == 1 and topo.groups["col"].pg is None
    with pytest.raises(KeyError, match="has no 'dep' group"):
        topo["dep"]


@pytest.mark.parametrize("mode,world,grid,depth,message", [
    ("2d", 6, None, 1, "2D tensor parallelism needs a square number of ranks; got 6"),
    ("2d", 8, None, 1, r"try 4 or 9"),
    ("3d", 4, None, 1, "3D tensor parallelism needs a cube number of ranks; got 4"),
    ("2p5d", 8, None, 3, "2.5D tensor parallelism needs q²·d ranks"),
    ("2p5d", 12, None, 2, "6 is not a square"),
    ("1d", 6, 4, 1, "world size 6 is not a multiple of the 1d grid size 4"),
    ("tp", 4, None, 1, "unknown parallel mode 'tp'"),
])
def test_impossible_sizes_name_the_constraint(mode, world, grid, depth, message):
    with pytest.raises(ValueError, match=message):
        T.group_members(mode, world, grid, depth)
