"""The Dynamic Class Pool: LRU insertion and eviction order (also against an OrderedDict model on
random sequences), slot alternation, the later of two writes wins, the trial pass undone
exactly, and the state dict round trip."""
from collections import OrderedDict

import pytest
import torch

from f2c.models import DynamicClassPool


def feats(n, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def snapshot(pool):
    return (pool.queue.clone(), pool.labels(), pool.order(), pool.slots(), pool.used,
            pool.lookup(range(-1, 60)))


def same(a, b):
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_insert_alternates_slots_and_marks_the_second_prototype():
    pool = DynamicClassPool(3, 4)
    f = feats(3)
    ones = pool.insert(f, [10, 20, 10])
    assert pool.lookup([10, 20, 30]) == [0, 1, -1]
    assert torch.equal(pool.queue[0, 0], f[0]) and torch.equal(pool.queue[1, 0], f[2])
    assert torch.equal(pool.queue[0, 1], f[1])
    assert ones.tolist() == [True, False, False]       # only 10 was already present
    assert pool.slots()[:2] == [0, 1] and pool.order() == [0, 1]
    g = feats(1, seed=1)
    ones = pool.insert(g, [10])                         # next slot of column 0 is 0 again
    assert torch.equal(pool.queue[0, 0], g[0]) and torch.equal(pool.queue[1, 0], f[2])
    assert ones.tolist() == [True, False, False] and pool.slots()[0] == 1


def test_eviction_takes_the_least_recently_used_column():
    pool = DynamicClassPool(3, 4)
    pool.insert(feats(3), [10, 20, 30])                 # order (MRU first): 30, 20, 10
    pool.insert(feats(1), [10])                         # 10 is now the most recent
    assert pool.order() == [0, 2, 1]
    pool.insert(feats(1, seed=2), [40])                 # evicts 20 (column 1)
    assert pool.lookup([10, 20, 30, 40]) == [0, -1, 2, 1]
    assert pool.slots()[1] == 1                         # a new identity: slot 0 written
    pool.lookup([30])                                   # a lookup does not refresh 30
    pool.insert(feats(1, seed=3), [50])
    assert pool.lookup([30, 50]) == [-1, 2]


def test_a_repeated_slot_keeps_the_later_feature():
    pool = DynamicClassPool(4, 4)
    f = feats(3)
    pool.insert(f, [5, 5, 5])                           # slots 0, 1, 0 of one column
    assert torch.equal(pool.queue[0, 0], f[2]) and torch.equal(pool.queue[1, 0], f[1])


def test_lru_matches_an_ordered_dict_model_on_random_sequences():
    g = torch.Generator().manual_seed(0)
    pool, model, free = DynamicClassPool(7, 2), OrderedDict(), list(range(7))
    for _ in range(40):
        labels = torch.randint(0, 15, (int(torch.randint(1, 6, (1,), generator=g)),),
                               generator=g).tolist()
        pool.insert(feats(len(labels), 2), labels)
        for label in labels:
            if label in model:
                model.move_to_end(label)
            else:
                col = free.pop(0) if free else model.popitem(last=False)[1]
                model[label] = col
        assert pool.order() == list(reversed(model.values()))
        assert pool.lookup(range(15)) == [model.get(i, -1) for i in range(15)]


def test_trial_edits_are_undone_exactly():
    pool = DynamicClassPool(6, 4)
    pool.insert(feats(5), [1, 2, 3, 1, 4])
    pool.insert(feats(3, seed=1), [2, 5, 6])            # full, with an eviction
    before = snapshot(pool)
    with pool.trial():
        pool.insert(feats(9, seed=2), [7, 2, 8, 9, 2, 2, 10, 11, 7])   # evictions, repeats
        assert not same(snapshot(pool), before)
    assert same(snapshot(pool), before)
    # and the pool goes on exactly as if the trial never happened
    other = DynamicClassPool(6, 4)
    other.load_state_dict(pool.state_dict())
    for p in (pool, other):
        p.insert(feats(4, seed=3), [12, 3, 13, 1])
    assert same(snapshot(pool), snapshot(other))


def test_trial_undo_on_a_fresh_pool_and_after_an_exception():
    pool = DynamicClassPool(4, 4)
    before = snapshot(pool)
    with pytest.raises(KeyError):
        with pool.trial():
            pool.insert(feats(3), [1, 2, 1])
            raise KeyError("boom")
    assert same(snapshot(pool), before) and pool.used == 0


def test_state_dict_round_trip_keeps_the_lru():
    pool = DynamicClassPool(5, 4, seed=3)
    pool.insert(feats(8), [4, 9, 4, 1, 7, 9, 3, 2])
    state = pool.state_dict()
    fresh = DynamicClassPool(5, 4, seed=99)
    fresh.load_state_dict(state)
    assert same(snapshot(fresh), snapshot(pool))
    with pytest.raises(ValueError, match="5 columns"):
        DynamicClassPool(6, 4).load_state_dict(state)


def test_initial_prototypes_are_unit_vectors_in_the_positive_orthant():
    q = DynamicClassPool(16, 8).queue
    assert q.shape == (2, 16, 8) and (q >= 0).all()
    torch.testing.assert_close(q.norm(dim=2), torch.ones(2, 16))
