"""ResumableSampler: a seeded per-epoch order, disjoint shards across ranks, and a mid-epoch restart
that yields exactly the rest of the interrupted epoch."""

from __future__ import annotations

import pytest

from pipelines.common import ResumableSampler, resumable_loader


def test_order_is_fixed_by_seed_and_epoch():
    a, b = ResumableSampler(50, 4, seed=3), ResumableSampler(50, 4, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    a.set_epoch(1)
    assert list(a) != list(b)  # a new order each epoch
    assert list(ResumableSampler(50, 4, seed=4)) != list(b)
    assert list(ResumableSampler(7, 2, shuffle=False)) == list(range(7))


@pytest.mark.parametrize("n, world_size", [(50, 2), (51, 2), (53, 4), (3, 4)])
def test_ranks_get_disjoint_equal_shards(n, world_size):
    shards = [list(ResumableSampler(n, 4, seed=1, rank=r, world_size=world_size)) for r in range(world_size)]
    seen = [i for shard in shards for i in shard]
    assert len(seen) == len(set(seen))  # no window on two ranks
    assert {len(s) for s in shards} == {n // world_size}  # same number of batches everywhere (DDP)
    assert len(seen) > n - world_size  # at most W - 1 windows left out per epoch
    assert all(len(ResumableSampler(n, 4, rank=r, world_size=world_size)) == n // world_size for r in range(world_size))


def test_set_position_skips_the_trained_batches_of_that_epoch_only():
    full = ResumableSampler(30, 4, seed=2)
    full.set_epoch(2)
    epoch2 = list(full)
    resumed = ResumableSampler(30, 4, seed=2)
    resumed.set_position(2, 3)
    assert list(resumed) == epoch2[12:]
    assert list(resumed) == epoch2[12:]  # iterating again (Lightning may) does not skip twice
    resumed.set_epoch(3)
    full.set_epoch(3)
    assert list(resumed) == list(full)  # the next epoch starts at its beginning


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        ResumableSampler(10, 2, rank=2, world_size=2)


def test_resumable_loader_batches_in_sampler_order():
    data = list(range(10))
    loader = resumable_loader(data, 3, seed=0, shuffle=True, position=(0, 1))
    order = list(ResumableSampler(10, 3, seed=0))
    assert [int(x) for batch in loader for x in batch] == order[3:]
