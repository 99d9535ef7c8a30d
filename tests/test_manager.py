"""ShardManager: claims, leases judged on the store's clock, fencing, retry budget, reset, status."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim import LeaseLostError, MetadataError, ShardManager
from shardclaim.status import summarize
from shardclaim.store.local import LocalStore
from shardclaim.store.memory import MemoryStore
from shardclaim.testing import FakeClock, HookStore, build_dataset, memory_dataset


@pytest.fixture
def local_ds(tmp_path: Path) -> str:
    return build_dataset(str(tmp_path / "ds"), tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mem(local_ds: str, clock: FakeClock) -> MemoryStore:
    """The local dataset's metadata copied into a memory store whose clock the test moves."""
    store = MemoryStore("clocked", clock=clock)
    local = LocalStore(local_ds)
    for info in local.list():
        obj = local.read(info.key)
        store.write(info.key, obj.data, metadata=obj.metadata)
    return store


def manager(store: MemoryStore, worker: str, **kw: Any) -> ShardManager:
    return ShardManager("memory://clocked", worker, store=store, lease_seconds=60, **kw)


def test_a_claim_returns_the_shard_with_readable_chunk_urls(local_ds: str) -> None:
    m = ShardManager(local_ds, "w1")
    shard = m.claim_shard(preferred_shard_id=3)
    assert shard is not None
    assert (shard["shard_id"], shard["status"], shard["assigned_to"], shard["attempt"]) == (
        3,
        "in_use",
        "w1",
        1,
    )
    assert shard["chunks"]
    assert all(Path(c).is_file() for c in shard["chunks"])
    on_disk = orjson.loads((Path(local_ds) / "shard_003" / "metadata.json").read_bytes())
    assert on_disk["status"] == "in_use"
    assert on_disk["assigned_to"] == "w1"
    status = {s["shard_id"]: s for s in m.get_shard_status()}
    assert (status[3]["status"], status[3]["assigned_to"]) == ("in_use", "w1")
    m.close()


def test_workers_claim_distinct_shards_until_none_is_left(local_ds: str) -> None:
    managers = [ShardManager(local_ds, f"w{i}") for i in range(3)]
    claimed = []
    for i in range(8):
        shard = managers[i % 3].claim_shard()
        assert shard is not None
        claimed.append(shard["shard_id"])
    assert sorted(claimed) == list(range(8))
    assert all(m.claim_shard() is None for m in managers)


def test_the_launcher_index_is_the_preferred_first_shard(
    local_ds: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "13")
    shard = ShardManager(local_ds, "w").claim_shard()
    assert shard is not None
    assert shard["shard_id"] == 13 % 8


def test_completion_needs_the_lease_and_happens_once(local_ds: str) -> None:
    m = ShardManager(local_ds, "w1")
    shard = m.claim_shard()
    assert shard is not None
    m.mark_completed(shard["shard_id"])
    with pytest.raises(LeaseLostError):
        m.mark_completed(shard["shard_id"])
    doc = orjson.loads((Path(local_ds) / f"shard_{shard['shard_id']:03d}" / "metadata.json").read_bytes())
    assert doc["status"] == "completed"
    assert doc["completed_at"]


def test_an_expired_lease_is_reclaimed_by_a_peer_and_fences_the_old_holder(
    mem: MemoryStore, clock: FakeClock
) -> None:
    a, b = manager(mem, "a"), manager(mem, "b")
    for _ in range(7):  # leave only shard 5 claimable
        assert b.claim_shard() is not None
    b_held = set(b.held_shards())
    (free,) = set(range(8)) - b_held
    assert a.claim_shard(preferred_shard_id=free)["shard_id"] == free  # type: ignore[index]
    for s in b_held:
        b.mark_completed(s)
    clock.now += 59
    assert b.claim_shard() is None  # a's lease is still live
    clock.now += 2
    reclaimed = b.claim_shard()
    assert reclaimed is not None
    assert (reclaimed["shard_id"], reclaimed["attempt"], reclaimed["reclaimed_from"]) == (free, 2, "a")
    with pytest.raises(LeaseLostError):
        a.heartbeat(free)
    with pytest.raises(LeaseLostError):
        a.mark_completed(free)
    b.mark_completed(free)
    assert summarize(b.get_shard_status())["state"] == "succeeded"


def test_heartbeats_keep_a_lease_alive(mem: MemoryStore, clock: FakeClock) -> None:
    a, b = manager(mem, "a"), manager(mem, "b")
    held = [a.claim_shard()["shard_id"] for _ in range(8)]  # type: ignore[index]
    for _ in range(5):
        clock.now += 45
        for s in held:
            a.heartbeat(s)
    assert b.claim_shard() is None
    clock.now += 61
    assert b.claim_shard() is not None


def test_a_skewed_worker_clock_does_not_steal_a_live_lease(
    local_ds: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = ShardManager(local_ds, "holder", lease_seconds=30)
    held = [holder.claim_shard() for _ in range(8)]
    assert all(held)
    for skew in (3600, -3600):
        monkeypatch.setattr(time, "time", lambda skew=skew: time.monotonic() + 1.8e9 + skew)
        assert ShardManager(local_ds, f"skewed{skew}", lease_seconds=30).claim_shard() is None


def test_failures_spend_the_retry_budget_until_failed_and_reset_restores_it(mem: MemoryStore) -> None:
    m = manager(mem, "w", max_attempts=2)
    s = m.claim_shard(preferred_shard_id=0)["shard_id"]  # type: ignore[index]
    assert m.mark_failed(s, "Traceback ...\nValueError: boom") == "available"
    assert m.claim_shard(preferred_shard_id=0)["attempt"] == 2  # type: ignore[index]
    assert m.mark_failed(s, "boom again") == "failed"
    status = {x["shard_id"]: x for x in m.get_shard_status()}
    assert (status[0]["status"], status[0]["failures"]) == ("failed", 2)
    assert orjson.loads(mem.read("shard_000/metadata.json").data)["last_error"] == "boom again"
    others = [m.claim_shard() for _ in range(7)]
    assert 0 not in [o["shard_id"] for o in others if o]
    assert m.claim_shard() is None
    m.reset_shard(0)
    again = m.claim_shard()
    assert again is not None
    assert again["shard_id"] == 0
    assert orjson.loads(mem.read("shard_000/metadata.json").data)["failures"] == 0


def test_release_gives_a_shard_back_without_spending_an_attempt(mem: MemoryStore) -> None:
    m = manager(mem, "w")
    s = m.claim_shard()["shard_id"]  # type: ignore[index]
    m.release_shard(s)
    doc = orjson.loads(mem.read(f"shard_{s:03d}/metadata.json").data)
    assert (doc["status"], doc.get("failures", 0), doc["assigned_to"]) == ("available", 0, None)


def test_reset_fences_off_the_current_holder(mem: MemoryStore) -> None:
    holder, operator = manager(mem, "holder"), manager(mem, "operator")
    s = holder.claim_shard()["shard_id"]  # type: ignore[index]
    operator.reset_shard(s)
    with pytest.raises(LeaseLostError):
        holder.mark_completed(s)


def test_status_is_one_listing_and_aggregates(mem: MemoryStore, clock: FakeClock) -> None:
    m = manager(mem, "w")
    a = m.claim_shard()["shard_id"]  # type: ignore[index]
    b = m.claim_shard()["shard_id"]  # type: ignore[index]
    m.mark_completed(a)
    clock.now += 10
    status = m.get_shard_status()
    by_id = {s["shard_id"]: s for s in status}
    assert by_id[b]["heartbeat_age_s"] == 10.0
    assert by_id[b]["expired"] is False
    agg = summarize(status)
    assert agg["state"] == "running"
    assert agg["counts"] == {"completed": 1, "in_use": 1, "available": 6}
    assert agg["records_done"] == by_id[a]["total_tasks"] > 0
    clock.now += 100
    assert summarize(m.get_shard_status())["state"] == "partial"


def test_status_counts_the_checkpointed_records_of_shards_in_flight_from_one_listing() -> None:
    """A progress display must move before a whole shard completes: the listing carries the records of
    a holder's checkpointed chunks (not a read per shard)."""
    store = HookStore(memory_dataset(3, chunks_per_shard=4, tasks_per_chunk=10, name="inflight"))
    m = ShardManager("memory://inflight", "w", store=store, lease_seconds=60)
    a = m.claim_shard()["shard_id"]  # type: ignore[index]
    b = m.claim_shard()["shard_id"]  # type: ignore[index]
    m.checkpoint(a, 3)
    m.checkpoint(b, 1)
    m.release_shard(b)  # a released shard keeps its checkpoint: its records stay counted
    store.count.clear()
    status = {s["shard_id"]: s for s in m.get_shard_status()}
    assert store.count["list"] == 1
    assert store.count["read"] == 0
    assert (status[a]["records_done"], status[b]["records_done"]) == (30, 10)
    assert summarize(list(status.values()))["records_done"] == 40
    m.mark_completed(a)
    status = {s["shard_id"]: s for s in m.get_shard_status()}
    assert status[a]["records_done"] == 40
    assert summarize(list(status.values()))["records_done"] == 50


def test_hostile_shard_metadata_is_refused_and_left_alone(local_ds: str) -> None:
    path = Path(local_ds) / "shard_002" / "metadata.json"
    doc = orjson.loads(path.read_bytes())
    doc["chunks"][0]["file"] = "../../etc/passwd"
    path.write_bytes(orjson.dumps(doc))
    before = path.read_bytes()
    m = ShardManager(local_ds, "w")
    with pytest.raises(MetadataError, match=r"shard_002/metadata\.json.*chunk_NNNN"):
        m.read_shard(2)
    shard = m.claim_shard(preferred_shard_id=2)  # refused, and the claim goes on to a sound shard
    assert shard is not None
    assert shard["shard_id"] != 2
    status = {s["shard_id"]: s for s in m.get_shard_status()}
    assert status[2]["status"] == "invalid"
    assert "shard_002/metadata.json" in status[2]["error"]
    assert path.read_bytes() == before
    m.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lease_seconds": 0}, "lease_seconds must be a number in"), ({"max_attempts": 0}, "max_attempts")],
)
def test_bad_options_are_clear_errors(local_ds: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardManager(local_ds, "w", **kwargs)


def test_an_unknown_shard_id_is_a_clear_error(local_ds: str) -> None:
    m = ShardManager(local_ds, "w")
    with pytest.raises(ValueError, match=r"unknown shard id 8: this dataset has shards 0\.\.7"):
        m.reset_shard(8)
    with pytest.raises(ValueError, match="unknown shard id"):
        m.claim_shard(preferred_shard_id=-1)


def _claimer(url: str, worker: str, barrier: Any, out: Any) -> None:
    try:
        m = ShardManager(url, worker, lease_seconds=600)
        barrier.wait(120)
        shard = m.claim_shard()
        out.put(("ok", None if shard is None else shard["shard_id"]))
    except BaseException as e:
        out.put(("error", repr(e)))


def test_24_processes_racing_for_8_shards_make_exactly_8_claims(shared_url: str, tmp_path: Path) -> None:
    url = build_dataset(shared_url, tmp_path)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(24), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, f"p{i}", barrier, out)) for i in range(24)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert [r for r in results if r[0] != "ok"] == []
    claims = [r[1] for r in results if r[1] is not None]
    assert sorted(claims) == list(range(8))


def test_the_background_heartbeat_renews_held_shards_only(mem: MemoryStore, clock: FakeClock) -> None:
    m = ShardManager("memory://clocked", "w", store=mem, lease_seconds=2.0, heartbeat_seconds=0.05)
    kept = m.claim_shard(preferred_shard_id=0)
    done = m.claim_shard(preferred_shard_id=1)
    assert kept is not None
    assert done is not None
    m.mark_completed(1)
    before = mem.read("shard_000/metadata.json").generation
    deadline = time.monotonic() + 30
    while mem.read("shard_000/metadata.json").generation == before:  # real thread, real interval
        assert time.monotonic() < deadline
        time.sleep(0.01)
    m.close()
    assert orjson.loads(mem.read("shard_000/metadata.json").data)["heartbeats"] >= 1
    assert m.lost == set()  # the completed shard was not "renewed" into a lost lease
    assert orjson.loads(mem.read("shard_001/metadata.json").data)["status"] == "completed"


def test_reset_stale_frees_expired_leases_only(local_ds: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = ShardManager(local_ds, "dead", lease_seconds=0.5)
    dead.claim_shard(preferred_shard_id=0)
    dead.close()  # its heartbeat stops, as if the process had died
    ShardManager(local_ds, "alive", lease_seconds=3600).claim_shard(preferred_shard_id=1)
    observer = ShardManager(local_ds, "observer")
    deadline = time.monotonic() + 30
    while not {s["shard_id"]: s for s in observer.get_shard_status()}[0]["expired"]:
        assert time.monotonic() < deadline  # the store's real clock has to pass half a second
        time.sleep(0.05)
    # Each lease is judged by its holder's own length: 0.5 s has passed, 3600 s has not.
    out = subprocess.run(
        [sys.executable, "-m", "shardclaim", "reset", local_ds, "--stale"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    status = {s["shard_id"]: s for s in observer.get_shard_status()}
    assert status[0]["status"] == "available"
    assert status[1]["status"] == "in_use"


def test_a_long_lease_is_not_taken_by_a_worker_with_short_leases(mem: MemoryStore, clock: FakeClock) -> None:
    cli = ShardManager("memory://clocked", "cli-user", store=mem, lease_seconds=3600)
    held = [cli.claim_shard()["shard_id"] for _ in range(8)]  # type: ignore[index]
    cli.close()
    clock.now += 600
    worker = ShardManager("memory://clocked", "worker", store=mem, lease_seconds=60)
    assert worker.claim_shard() is None
    assert not any(s["expired"] for s in worker.get_shard_status())
    clock.now += 3001
    assert worker.claim_shard()["shard_id"] in held  # type: ignore[index]


def test_on_an_etag_store_every_write_of_a_shard_gets_a_new_version_and_fences_still_hold() -> None:
    """S3 versions objects by a hash of their bytes: had two writes of one shard equal bytes, a fenced
    holder naming the older one would win again (ABA). With the clock frozen, a claim / heartbeat /
    release / reset / fail cycle repeated still never produces a version twice, and the holder a reset
    fenced off cannot complete after the shard went back to where it started."""
    clock = FakeClock()
    store = memory_dataset(1, clock=clock, name="etag", versions="etag")
    key = "shard_000/metadata.json"

    def mgr(worker: str) -> ShardManager:
        return ShardManager("memory://etag", worker, store=store, lease_seconds=60, max_attempts=100)

    seen = [store.read(key).generation]
    w, operator = mgr("w"), mgr("operator")
    for _ in range(30):
        for step in (
            w.claim_shard,
            lambda: w.heartbeat(0),
            lambda: w.release_shard(0),
            lambda: operator.reset_shard(0),
            w.claim_shard,
            lambda: w.mark_failed(0, "boom"),
            lambda: operator.reset_shard(0),
        ):
            step()
            seen.append(store.read(key).generation)
    assert all(isinstance(g, str) for g in seen)
    assert len(set(seen)) == len(seen)

    holder = mgr("holder")
    assert holder.claim_shard() is not None
    operator.reset_shard(0)
    assert mgr("other").claim_shard() is not None
    operator.reset_shard(0)
    with pytest.raises(LeaseLostError):
        holder.mark_completed(0)
    assert orjson.loads(store.read(key).data)["status"] == "available"
