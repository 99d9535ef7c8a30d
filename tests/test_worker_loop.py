"""The worker loop: settle on exit, fail and move on, wait for live leases on the store's clock."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shardclaim import ShardclaimError, ShardManager, create_sharded_dataset
from shardclaim.store.local import LocalStore
from shardclaim.store.memory import MemoryStore


@pytest.fixture
def ds(tmp_path: Path) -> str:
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(60)))
    url = str(tmp_path / "ds")
    create_sharded_dataset(str(src), url, num_shards=6, chunk_size_mb=1)
    return url


def test_the_loop_processes_every_record_once_and_completes_every_shard(ds: str) -> None:
    seen = []
    with ShardManager(ds, "w") as m:
        for claim in m.claims():
            with claim:
                seen += [r["id"] for r in claim.records()]
            assert claim.outcome == "completed"
        assert sorted(seen) == list(range(60))
        assert {s["status"] for s in m.get_shard_status()} == {"completed"}


def test_an_exception_fails_the_shard_and_the_loop_goes_on_until_the_budget_is_spent(ds: str) -> None:
    outcomes = []
    with ShardManager(ds, "w", max_attempts=2) as m:
        for claim in m.claims():
            with claim:
                if claim.shard_id == 4:
                    raise RuntimeError("model OOM on shard 4")
            outcomes.append((claim.shard_id, claim.outcome))
        status = {s["shard_id"]: s for s in m.get_shard_status()}
        doc = m.read_shard(4)
    assert (4, "available") in outcomes
    assert (4, "failed") in outcomes
    assert (status[4]["status"], status[4]["failures"]) == ("failed", 2)
    assert "RuntimeError: model OOM on shard 4" in doc["last_error"]
    assert all(status[i]["status"] == "completed" for i in range(6) if i != 4)


def test_a_waiting_worker_sleeps_until_a_live_lease_could_expire_then_takes_it(ds: str) -> None:
    now = [1_900_000_000.0]
    store = MemoryStore("loop", clock=lambda: now[0])
    local = LocalStore(ds)
    for info in local.list():
        obj = local.read(info.key)
        store.write(info.key, obj.data, metadata=obj.metadata)
    holder = ShardManager("memory://loop", "holder", store=store, lease_seconds=60)
    held = [holder.claim_shard() for _ in range(6)]
    for shard in held[1:]:
        holder.mark_completed(shard["shard_id"])  # type: ignore[index]
    now[0] += 20
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    waiter = ShardManager("memory://loop", "waiter", store=store, lease_seconds=60)
    taken = []
    for claim in waiter.claims(sleep=sleep, handle_sigterm=False):
        taken.append(claim.shard_id)
        waiter.mark_completed(claim.shard_id)
    assert taken == [held[0]["shard_id"]]  # type: ignore[index]
    # The lease had 40 s left on the store's clock: the waiter polled (never longer than a heartbeat
    # interval, 15 s) and took the shard within a poll of its expiry.
    assert 40 < sum(sleeps) <= 40 + 15 * 1.2
    assert max(sleeps) <= 15 * 1.2
    holder.close()


def test_a_shard_without_metadata_stops_the_loop_with_a_clear_error(ds: str) -> None:
    (Path(ds) / "shard_003" / "metadata.json").unlink()

    def drain() -> None:
        with ShardManager(ds, "w") as m:
            for claim in m.claims(sleep=lambda s: None, handle_sigterm=False):
                with claim:
                    pass

    with pytest.raises(ShardclaimError, match=r"shards \[3\] .* no metadata"):
        drain()


def test_a_directory_without_a_master_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(ShardclaimError, match="not a complete shardclaim dataset"):
        ShardManager(str(tmp_path), "w")


def test_wait_returns_the_aggregate_once_settled_and_times_out_on_the_injected_clock(ds: str) -> None:
    holder = ShardManager(ds, "holder")
    held = [holder.claim_shard()["shard_id"] for _ in range(6)]  # type: ignore[index]
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with pytest.raises(TimeoutError, match="still unsettled after 30"):
        holder.wait(timeout=30, poll_seconds=5, sleep=sleep, clock=lambda: now[0])
    assert sleeps == [5.0] * 6
    for shard_id in held:
        holder.mark_completed(shard_id)
    assert holder.wait(timeout=30, sleep=sleep, clock=lambda: now[0])["state"] == "succeeded"
    holder.close()


def test_records_resume_after_the_last_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(b"".join(b'{"id": %3d, "pad": "%s"}\n' % (i, b"x" * 180) for i in range(50)))
    ds = str(tmp_path / "ds")
    create_sharded_dataset(str(src), ds, num_shards=1, chunk_size_mb=2100 / 2**20)
    first = ShardManager(ds, "first", lease_seconds=60)
    claim = next(first.claims(handle_sigterm=False))
    assert claim.resume_chunk == 0
    claim.checkpoint(3)
    first.release_shard(0)  # as a crash would, once the lease expired: progress stays in the shard
    second = ShardManager(ds, "second")
    claim = next(second.claims(handle_sigterm=False))
    assert claim.resume_chunk == 3
    assert [r["id"] for r in claim.records()] == list(range(30, 50))
    second.reset_shard(0)
    assert ShardManager(ds, "third").claim_shard()["resume_chunk"] == 0  # type: ignore[index]
