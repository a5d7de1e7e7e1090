"""spawn(): results per rank, and failures that end promptly with the failing rank's error."""
import os
import time

import pytest
import torch

import shared.parallel as shared
from shared.parallel import SpawnError, spawn


def _echo(env, base):
    t = torch.tensor([float(env.rank)])
    topo = shared.build_topology("1d")
    total = shared.raw_all_reduce(t, topo["tensor"])
    return base + env.rank, env.world_size, float(total)


def _raise_on_rank_one(env):
    if env.rank == 1:
        raise RuntimeError("boom from the test")
    # the others block in a collective that rank 1 never joins
    shared.raw_all_reduce(torch.ones(1), shared.build_topology("1d")["tensor"])


def _hang(env):
    time.sleep(600)


def _die(env):
    if env.rank == 2:
        os._exit(3)
    time.sleep(600)


def test_spawn_returns_results_by_rank():
    out = spawn(_echo, 3, 10)
    assert out == [(10, 3, 3.0), (11, 3, 3.0), (12, 3, 3.0)]


def test_child_exception_is_reraised_with_rank_and_traceback_not_as_timeout():
    with pytest.raises(SpawnError) as info:
        spawn(_raise_on_rank_one, 2, timeout_s=120)
    msg = str(info.value)
    assert "rank 1 of 2 raised" in msg and "boom from the test" in msg and "_raise_on_rank_one" in msg
    assert "timed out" not in msg


def test_hanging_children_are_killed_at_the_timeout():
    with pytest.raises(SpawnError, match=r"timed out after 3 s; ranks still running: \[0, 1\]"):
        spawn(_hang, 2, timeout_s=3)


def test_child_that_dies_is_named():
    with pytest.raises(SpawnError, match="rank 2 of 4 exited with code 3"):
        spawn(_die, 4, timeout_s=120)


def test_single_process_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = shared.init_distributed(device="cpu")
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)
    shared.teardown()  # safe without a process group


def _return_tensors(env):
    return [torch.full((1000,), float(env.rank + i)) for i in range(40)]


def test_tensors_returned_by_children_survive_their_exit():
    """Children exit right after reporting; the tensors they return must not depend on the child
    still being alive (tensors queued as shared-memory handles did, and failed intermittently)."""
    for _ in range(2):
        out = spawn(_return_tensors, 8)
        assert [float(o[5].sum()) for o in out] == [1000.0 * (r + 5) for r in range(8)]
