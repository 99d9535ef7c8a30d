"""Straggler stealing (lease.ranges, shardclaim.stealing): an idle worker takes the untouched tail of a
running shard; fencing survives the split; parts are reclaimed, reset and completed like shards."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shardclaim import LeaseLostError, ShardManager
from shardclaim.layout import MetadataError, check_shard
from shardclaim.store.memory import MemoryStore
from shardclaim.testing import FakeClock, memory_dataset

KEY = "shard_000/metadata.json"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["ordered", "etag"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> MemoryStore:
    return memory_dataset(1, chunks_per_shard=8, tasks_per_chunk=5, clock=clock, name="steal",
                          versions=request.param)  # fmt: skip


def mgr(store: MemoryStore, worker: str) -> ShardManager:
    return ShardManager("memory://steal", worker, store=store, lease_seconds=60)


def doc(store: MemoryStore) -> dict[str, Any]:
    return check_shard(KEY, orjson.loads(store.read(KEY).data))


def test_a_holder_that_never_reserves_is_never_split(store: MemoryStore) -> None:
    holder, idle = mgr(store, "holder"), mgr(store, "idle")
    assert holder.claim_shard() is not None
    assert idle.steal() is None
    assert "ranges" not in doc(store)


def test_the_idle_worker_takes_the_untouched_second_half_and_the_holder_stops_at_the_cut(
    store: MemoryStore,
) -> None:
    holder, idle = mgr(store, "holder"), mgr(store, "idle")
    assert holder.claim_shard() is not None
    assert holder.reserve(0, 0, 2) == (2, 8)  # working on chunks 0 and 1
    taken = idle.steal()
    assert taken is not None
    assert taken["range"] == [5, 8]  # half of the untouched chunks 2..7, rounded up for the taker
    assert (taken["status"], taken["assigned_to"], taken["resume_chunk"]) == ("in_use", "idle", 5)
    parts = doc(store)["ranges"]
    assert [(p["start"], p["end"], p["assigned_to"]) for p in parts] == [(0, 5, "holder"), (5, 8, "idle")]
    # The holder's write at its next boundary is not fenced by the split: it learns its new end.
    assert holder.reserve(0, 2, 10) == (5, 5)
    assert holder.reserve(0, 5, 1) == (5, 5)  # nothing left for it
    holder.mark_completed(0)
    assert doc(store)["status"] == "in_use"  # the taker's part still runs
    assert idle.reserve(0, 5, 3) == (8, 8)
    idle.mark_completed(0)
    final = doc(store)
    assert final["status"] == "completed"
    assert [p["status"] for p in final["ranges"]] == ["completed", "completed"]


def test_a_split_never_takes_a_reserved_chunk_and_ranges_split_again(store: MemoryStore) -> None:
    holder, a, b = mgr(store, "holder"), mgr(store, "a"), mgr(store, "b")
    holder.claim_shard()
    holder.reserve(0, 0, 7)  # everything but chunk 7 is reserved
    taken = a.steal()
    assert taken is not None
    assert taken["range"] == [7, 8]
    assert b.steal() is None  # a's part has nothing reserved yet and the holder's is all reserved
    a.reserve(0, 7, 1)
    assert b.steal() is None  # the one chunk of a's part is now in work
    assert [(p["start"], p["end"]) for p in doc(store)["ranges"]] == [(0, 7), (7, 8)]


def test_a_reset_fences_every_part_and_makes_the_shard_whole(store: MemoryStore) -> None:
    holder, idle, operator = mgr(store, "holder"), mgr(store, "idle"), mgr(store, "operator")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    assert idle.steal() is not None
    assert operator.reset_shard(0)
    reset = doc(store)
    assert "ranges" not in reset
    assert reset["status"] == "available"
    for m in (holder, idle):
        with pytest.raises(LeaseLostError):
            m.reserve(0, 1, 1)
    outcomes = [a["outcome"] for a in reset["attempts"]]
    assert outcomes.count("lost (reset by an operator)") == 2


def test_an_expired_part_is_reclaimed_and_its_old_holder_fenced(store: MemoryStore, clock: FakeClock) -> None:
    holder, idle, late = mgr(store, "holder"), mgr(store, "idle"), mgr(store, "late")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    assert idle.steal() is not None
    holder.close()  # the holder dies: it stops renewing
    for _ in range(5):  # the taker keeps renewing its own part: that must not keep the holder's alive
        clock.now += 15
        idle.renew_leases()
    assert late.claim_shard() is None  # a worker that does not handle parts never takes one
    claimed = late.claim_shard(parts=True)
    assert claimed is not None
    assert (claimed["range"], claimed["resume_chunk"], claimed.get("reclaimed_from")) == ([0, 4], 0, None)
    parts = doc(store)["ranges"]
    assert (parts[0]["assigned_to"], parts[0]["reclaimed_from"]) == ("late", "holder")
    with pytest.raises(LeaseLostError):
        holder.reserve(0, 1, 1)
    assert idle.reserve(0, 4, 1) == (5, 8)  # the taker was not fenced by the reclaim


def test_a_released_part_is_claimed_again_by_a_parts_aware_worker(store: MemoryStore) -> None:
    holder, idle, other = mgr(store, "holder"), mgr(store, "idle"), mgr(store, "other")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    assert idle.steal() is not None
    idle.release_shard(0)
    assert doc(store)["status"] == "in_use"
    again = other.claim_shard(parts=True)
    assert again is not None
    assert again["range"] == [4, 8]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p[1].update(start=3), "cover"),
        (lambda p: p[1].update(end=9), "cover"),
        (lambda p: p[0].update(resume_chunk=6), "outside"),
        (lambda p: p[1].update(status="stolen"), "known status"),
        (lambda p: p.append(dict(p[1])), "cover"),
    ],
)
def test_hostile_ranges_are_refused(store: MemoryStore, change: Any, message: str) -> None:
    holder, idle = mgr(store, "holder"), mgr(store, "idle")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    idle.steal()
    bad = doc(store)
    change(bad["ranges"])
    with pytest.raises(MetadataError, match=message):
        check_shard(KEY, bad)


def test_a_stolen_part_is_split_again_and_every_chunk_has_one_holder(store: MemoryStore) -> None:
    holder, a, b = mgr(store, "holder"), mgr(store, "a"), mgr(store, "b")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    taken = a.steal()
    assert taken is not None
    assert taken["range"] == [4, 8]
    holder.reserve(0, 1, 2)  # the holder has reserved up to 3: one untouched chunk left (3)
    a.reserve(0, 4, 1)  # a works on chunk 4; 5..7 untouched, the most of any part
    again = b.steal()
    assert again is not None
    assert again["range"] == [6, 8]
    parts = doc(store)["ranges"]
    assert [(p["start"], p["end"], p["assigned_to"]) for p in parts] == [
        (0, 4, "holder"),
        (4, 6, "a"),
        (6, 8, "b"),
    ]
    assert a.reserve(0, 5, 4) == (6, 6)  # a's range now ends at 6
    assert holder.reserve(0, 3, 1) == (4, 4)
    assert b.reserve(0, 6, 2) == (8, 8)
    for m in (holder, a, b):
        m.mark_completed(0)
    assert doc(store)["status"] == "completed"


def test_status_counts_the_records_of_every_part_from_one_listing(store: MemoryStore) -> None:
    holder, idle = mgr(store, "holder"), mgr(store, "idle")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    idle.steal()  # [0, 4) holder, [4, 8) idle
    holder.reserve(0, 3, 1, done=True)  # chunks 0..2 done (a checkpoint)
    idle.reserve(0, 4, 4)
    idle.mark_completed(0)  # chunks 4..7 done
    (entry,) = holder.get_shard_status()
    assert (entry["status"], entry["records_done"]) == ("in_use", (3 + 4) * 5)
    view = holder.shard_views()[0]
    assert (view.parts, view.steal) == (2, 0)


def test_a_reservation_is_not_a_checkpoint(store: MemoryStore) -> None:
    """A holder preempted after reserving is succeeded from its last checkpoint, not from its
    reservation: results written when a claim completes would otherwise be lost."""
    holder, other = mgr(store, "holder"), mgr(store, "other")
    holder.claim_shard()
    holder.reserve(0, 0, 3)
    holder.reserve(0, 3, 2)  # it went through chunks 0..2 without saying they are durable
    holder.release_shard(0)
    again = other.claim_shard()
    assert again is not None
    assert again.get("resume_chunk", 0) == 0
    other.reserve(0, 0, 2, done=True)
    other.reserve(0, 2, 2, done=True)
    assert doc(store)["resume_chunk"] == 2


def test_status_says_a_shard_is_split(store: MemoryStore) -> None:
    from shardclaim.cli.render import shard_line

    holder, idle = mgr(store, "holder"), mgr(store, "idle")
    holder.claim_shard()
    holder.reserve(0, 0, 1)
    idle.steal()
    (entry,) = holder.get_shard_status()
    assert entry["parts"] == 2
    assert shard_line(entry).startswith("Shard 0: in_use in 2 parts")
