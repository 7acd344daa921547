"""ResumableSampler: a seeded per-epoch order, disjoint shards across ranks, and a mid-epoch restart
that yields exactly the rest of the interrupted epoch."""

from __future__ import annotations

import pytest

from pipelines.common import ResumableSampler, resumable_loader, translate_position


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


@pytest.mark.parametrize("n, world_size", [(5, 2), (51, 4), (3, 4)])
def test_evaluation_shards_score_every_item_once(n, world_size):
    samplers = [
        ResumableSampler(n, 2, shuffle=False, rank=r, world_size=world_size, even=False) for r in range(world_size)
    ]
    shards = [list(s) for s in samplers]
    assert sorted(i for shard in shards for i in shard) == list(range(n))  # nothing dropped, nothing twice
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(s) for s in samplers] == [max(1, len(shard)) for shard in shards]  # never 0, see the docstring


@pytest.mark.parametrize("saved, now, batches", [(2, 1, 3), (1, 2, 4), (1, 2, 5), (3, 2, 2), (2, 4, 3)])
def test_translated_position_continues_the_epoch_on_another_world_size(saved, now, batches):
    n, size = 61, 3
    epoch = ResumableSampler(n, size, seed=5)
    epoch.set_epoch(1)
    order = list(epoch)
    trained = []
    for r in range(saved):
        before = ResumableSampler(n, size, seed=5, rank=r, world_size=saved)
        before.set_epoch(1)
        trained += list(before)[: batches * size]
    rest = []
    for r in range(now):
        after = ResumableSampler(n, size, seed=5, rank=r, world_size=now)
        after.set_position(1, translate_position(batches, saved, now))
        rest += list(after)
    assert sorted(trained) == sorted(order[: batches * size * saved])  # what the saved run had trained
    again = set(trained) & set(rest)
    assert len(again) < now * size  # rounding down to a whole batch repeats less than one batch per rank
    if batches * saved % now == 0:
        assert not again  # an exact continuation
    usable = n - n % now
    assert set(trained) | set(rest) >= set(order[: batches * size * saved]) | set(
        order[batches * size * saved : usable]
    )  # nothing of the epoch is skipped
