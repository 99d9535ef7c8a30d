"""Issue 9's exactly-once and keeps-working promises, each under the hostile event that broke it.

Deterministic tests move a fake clock and interleave actors with :class:`shardclaim.testing.HookStore`;
the races that matter also run with real processes on a real directory and on the GCS test server.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim import LeaseLostError, MetadataError, ShardManager
from shardclaim.fanin import FINALIZE_KEY, finalize_once
from shardclaim.lease.heartbeat import Heartbeat
from shardclaim.status import summarize
from shardclaim.store.local import LocalStore
from shardclaim.testing import FakeClock, HookStore, build_dataset, memory_dataset, process_gone, wait_for
from tests import _workers


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def manager(store: Any, worker: str, **kw: Any) -> ShardManager:
    kw.setdefault("lease_seconds", 60)
    return ShardManager("memory://sim", worker, store=store, **kw)


# -- 1. operator actions are compare-and-swaps on the state they judged ------------------------------


@pytest.mark.parametrize("moment", ["read", "write"])
def test_reset_stale_leaves_alone_a_shard_its_slow_holder_completed_after_the_listing(
    clock: FakeClock, moment: str
) -> None:
    store = HookStore(memory_dataset(4, clock=clock))
    holder = manager(store, "slow")
    assert holder.claim_shard(preferred_shard_id=2) is not None
    clock.advance(61)  # the lease expired; the holder is alive, only slow
    operator = manager(store, "operator")
    # Right after the operator judged shard 2 stale, the holder completes it.
    store.before(moment, lambda: holder.mark_completed(2), key="shard_002")
    assert operator.reset_stale() == []
    assert operator.read_shard(2)["status"] == "completed"
    assert manager(store, "second").claim_shard(preferred_shard_id=2)["shard_id"] != 2  # type: ignore[index]
    holder.close()


def test_reset_failed_leaves_alone_a_shard_reset_and_reclaimed_after_the_listing(clock: FakeClock) -> None:
    store = HookStore(memory_dataset(2, clock=clock))
    w = manager(store, "w", max_attempts=1)
    w.claim_shard(preferred_shard_id=0)
    assert w.mark_failed(0, "boom") == "failed"
    other = manager(store, "other")

    def another_operator_resets_and_a_worker_claims() -> None:
        other.reset_shard(0)
        assert other.claim_shard(preferred_shard_id=0) is not None

    store.before("read", another_operator_resets_and_a_worker_claims, key="shard_000")
    assert manager(store, "operator").reset_failed() == []
    doc = other.read_shard(0)
    assert (doc["status"], doc["assigned_to"]) == ("in_use", "other")
    other.mark_completed(0)  # the new holder's lease was not touched
    w.close()
    other.close()


def test_reset_stale_with_real_processes_never_makes_a_shard_complete_twice(tmp_path: Path) -> None:
    # Slow holders whose leases expire while they work, an operator resetting stale shards in a loop.
    url = build_dataset(str(tmp_path / "ds"), tmp_path, shards=40, records=40)
    logs = tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    holders = [
        ctx.Process(target=_workers.slow_holders, args=(url, f"h{i}", str(logs), 0.4, 0.25)) for i in range(4)
    ]
    for p in holders:
        p.start()
    resets = 0
    while any(p.is_alive() for p in holders):
        out = subprocess.run(
            [sys.executable, "-m", "shardclaim", "reset", url, "--stale"],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        resets += out.stdout.count("reset to available")
    for p in holders:
        p.join()
        assert p.exitcode == 0
    completed = Counter(int(x) for f in logs.glob("*.completed") for x in f.read_text().split())
    assert completed
    assert max(completed.values()) == 1
    assert resets > 0  # the operator did reset stale shards: the race was exercised
    status = ShardManager(url, "observer").get_shard_status()
    assert all(s["status"] in ("completed", "available", "in_use") for s in status)


# -- 2. a lease is its token, never the worker id ----------------------------------------------------


def test_a_fenced_holder_never_completes_though_the_new_holder_has_its_worker_id(clock: FakeClock) -> None:
    store = memory_dataset(2, clock=clock)
    first = manager(store, "same-id")
    second = manager(store, "same-id")
    assert first.claim_shard(preferred_shard_id=0) is not None
    clock.advance(61)
    assert second.claim_shard(preferred_shard_id=0)["shard_id"] == 0  # type: ignore[index]
    with pytest.raises(LeaseLostError):
        first.heartbeat(0)  # what its background heartbeat finds
    with pytest.raises(LeaseLostError):
        first.mark_completed(0)
    with pytest.raises(LeaseLostError):
        first.mark_failed(0, "late")
    second.mark_completed(0)
    assert second.read_shard(0)["status"] == "completed"
    first.close()
    second.close()


def test_a_manager_that_settled_a_shard_does_not_adopt_it_again(clock: FakeClock) -> None:
    store = memory_dataset(1, clock=clock)
    first = manager(store, "same-id")
    first.claim_shard()
    first.mark_completed(0)
    manager(store, "operator").reset_shard(0)
    twin = manager(store, "same-id")
    assert twin.claim_shard() is not None
    with pytest.raises(LeaseLostError):
        first.mark_completed(0)  # its lease ended at its own completion
    twin.mark_completed(0)
    first.close()
    twin.close()


def test_a_manager_that_never_held_a_shard_may_complete_it_for_the_holder_it_names(clock: FakeClock) -> None:
    # The seed's CLI: claim in one process, complete in another.
    store = memory_dataset(1, clock=clock)
    claimer = manager(store, "machine0", lease_seconds=3600)
    claimer.claim_shard(adoptable=True)
    claimer.close()
    manager(store, "machine0").mark_completed(0)
    assert manager(store, "x").read_shard(0)["status"] == "completed"
    with pytest.raises(LeaseLostError):
        manager(store, "someone-else").mark_completed(0)


def test_two_processes_with_one_worker_id_complete_a_reclaimed_shard_once(
    shared_url: str, tmp_path: Path
) -> None:
    url = build_dataset(shared_url, tmp_path, shards=2, records=4, chunk_size_mb=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    holder = ctx.Process(target=_workers.hold_until_lost_then_complete, args=(url, "twin", 2.0, str(logs)))
    holder.start()
    wait_for((logs / "claimed").exists, "the holder to claim shard 0")
    os.kill(holder.pid, signal.SIGSTOP)  # type: ignore[arg-type]
    twin = ShardManager(url, "twin", lease_seconds=2.0)

    def twin_takes_shard_0() -> bool:
        shard = twin.claim_shard(preferred_shard_id=0)
        if shard is not None and shard["shard_id"] != 0:
            twin.release_shard(shard["shard_id"])
        return 0 in twin.held_shards()

    wait_for(twin_takes_shard_0, "the paused holder's lease to expire")
    os.kill(holder.pid, signal.SIGCONT)  # type: ignore[arg-type]
    holder.join(timeout=120)
    assert (logs / "outcome").read_text() == "LeaseLostError"
    twin.mark_completed(0)
    twin.close()


# -- 3. the finalizer is fenced like a shard ---------------------------------------------------------


def settle_all(store: Any) -> None:
    m = manager(store, "settler")
    while (shard := m.claim_shard()) is not None:
        m.mark_completed(shard["shard_id"])
    m.close()


def marker(store: Any) -> dict[str, Any]:
    return dict(orjson.loads(store.read(FINALIZE_KEY).data))


def test_a_finalizer_paused_past_its_lease_is_told_and_its_successor_s_marker_stands(
    clock: FakeClock,
) -> None:
    store = memory_dataset(2, clock=clock)
    settle_all(store)
    a, b = manager(store, "a"), manager(store, "b")
    ran: list[str] = []

    def paused(agg: dict[str, Any]) -> None:
        ran.append("a")
        clock.advance(61)  # a stalls past its lease; b takes the marker over
        assert finalize_once(b, lambda agg: ran.append("b")) == "ran"

    with pytest.raises(LeaseLostError):
        finalize_once(a, paused)
    assert ran == ["a", "b"]
    assert (marker(store)["status"], marker(store)["worker"]) == ("done", "b")
    assert finalize_once(a, lambda agg: ran.append("again")) == "done"
    assert ran == ["a", "b"]


def test_a_store_error_in_the_finalizer_heartbeat_is_retried_and_the_lease_kept(clock: FakeClock) -> None:
    inner = memory_dataset(2, clock=clock)
    settle_all(inner)
    store = HookStore(inner)
    a, b = manager(store, "a"), manager(store, "b")

    def finalizer(agg: dict[str, Any]) -> None:
        store.before("write", OSError(errno.ENOSPC, "No space left on device"), key=FINALIZE_KEY)
        clock.advance(40)
        a.renew_leases()  # the heartbeat's beat: the disk is full for this one write
        clock.advance(40)
        a.renew_leases()  # the next beat renews
        clock.advance(40)  # 120 s after the start, 40 s after the last renewal: still held
        assert finalize_once(b, lambda agg: None) == "running"

    assert finalize_once(a, finalizer) == "ran"
    assert marker(store)["status"] == "done"


def test_a_failing_finalizer_is_recorded_shown_and_cleared_by_reset(clock: FakeClock) -> None:
    store = memory_dataset(2, clock=clock)
    settle_all(store)
    m = manager(store, "a")

    def broken(agg: dict[str, Any]) -> None:
        raise RuntimeError("merge failed: disk quota")

    with pytest.raises(RuntimeError):
        finalize_once(m, broken)
    assert marker(store)["status"] == "failed"
    assert "disk quota" in marker(store)["error"]
    assert finalize_once(m, lambda agg: None) == "failed"  # not re-run blindly for the same state
    assert m.finalizer_status()["status"] == "failed"
    m.reset_finalizer()
    calls: list[str] = []
    assert finalize_once(m, lambda agg: calls.append(agg["state"])) == "ran"
    assert calls == ["succeeded"]


# -- 4. the finalizer runs again after the shards change ---------------------------------------------


def test_the_finalizer_runs_again_after_a_reset_and_re_run(clock: FakeClock) -> None:
    store = memory_dataset(2, clock=clock)
    w = manager(store, "w", max_attempts=1)
    w.claim_shard(preferred_shard_id=0)
    w.mark_completed(0)
    w.claim_shard(preferred_shard_id=1)
    w.mark_failed(1, "oom")
    states: list[str] = []
    assert finalize_once(w, lambda agg: states.append(agg["state"])) == "ran"
    assert finalize_once(w, lambda agg: states.append(agg["state"])) == "done"
    assert w.reset_failed() == [1]
    assert finalize_once(w, lambda agg: states.append("too early")) == "unsettled"
    w.claim_shard(preferred_shard_id=1)
    w.mark_completed(1)
    assert finalize_once(w, lambda agg: states.append(agg["state"])) == "ran"
    assert states == ["failed", "succeeded"]
    w.close()


# -- 5. a heartbeat outlives any error ---------------------------------------------------------------


def test_the_heartbeat_thread_outlives_any_exception_in_a_beat() -> None:
    ticks: queue.Queue[bool] = queue.Queue()
    done: queue.Queue[int] = queue.Queue()
    beats = [0]

    def beat() -> None:
        beats[0] += 1
        done.put(beats[0])
        if beats[0] == 1:
            raise RuntimeError("a bug in a beat")
        if beats[0] == 2:
            raise OSError(errno.EIO, "I/O error")

    hb = Heartbeat(beat, 10.0, name="t", wait=lambda seconds: ticks.get())
    hb.start()
    for expected in (1, 2, 3):
        ticks.put(False)
        assert done.get(timeout=60) == expected
    ticks.put(True)
    hb.join()
    assert beats[0] == 3


def test_a_heartbeat_told_to_stop_without_waiting_returns_at_once_and_runs_no_further_step() -> None:
    """``stop(wait=False)`` while a step is blocked (a store being retried, say): the caller goes on, the
    step finishes, and no step starts after it."""
    ticks: queue.Queue[bool] = queue.Queue()
    entered, release = threading.Event(), threading.Event()
    steps: list[int] = []

    def step() -> None:
        steps.append(1)
        entered.set()
        release.wait(60)

    hb = Heartbeat(step, 10.0, name="t", wait=lambda seconds: ticks.get())
    hb.start()
    ticks.put(False)
    assert entered.wait(60)
    hb.stop(wait=False)
    assert hb.alive  # returned while the step still runs
    release.set()
    ticks.put(False)  # the wait after the step ends as a tick: the loop must see the stop, not step again
    hb.join()
    assert not hb.alive
    assert steps == [1]


def test_an_unexpected_error_in_a_shard_heartbeat_keeps_the_lease(clock: FakeClock) -> None:
    store = HookStore(memory_dataset(2, clock=clock))
    m = manager(store, "w")
    m.claim_shard(preferred_shard_id=0)
    store.before("write", ValueError("unexpected"), key="shard_000")
    clock.advance(40)
    m.renew_leases()
    clock.advance(40)
    m.renew_leases()
    clock.advance(40)
    assert manager(store, "peer").claim_shard(preferred_shard_id=0)["shard_id"] != 0  # type: ignore[index]
    m.mark_completed(0)
    m.close()


def test_the_local_store_turns_a_full_disk_into_a_transient_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.errors import TransientStoreError
    from shardclaim.store import local

    store = LocalStore(tmp_path)

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local.os, "write", full)
    with pytest.raises(TransientStoreError):
        store.write("a/b.json", b"{}")


# -- 12. the document is the truth; object metadata only caches it ------------------------------------


def test_a_dataset_copied_without_extended_attributes_keeps_its_state(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=4, records=40)
    m = ShardManager(ds, "w", max_attempts=1)
    for shard_id in (0, 1):
        m.claim_shard(preferred_shard_id=shard_id)
        m.mark_completed(shard_id)
    m.claim_shard(preferred_shard_id=2)
    m.mark_failed(2, "bad")
    m.close()
    copy = tmp_path / "copy"
    subprocess.run(["/bin/cp", "-r", ds, str(copy)], check=True)
    with pytest.raises(OSError):  # noqa: PT011 - the copy really lost the attribute
        os.getxattr(copy / "shard_000" / "metadata.json", "user.shardclaim")
    c = ShardManager(str(copy), "w2")
    assert [s["status"] for s in c.get_shard_status()] == ["completed", "completed", "failed", "available"]
    done = []
    for claim in c.claims():
        with claim:
            done.append(claim.shard_id)
    assert done == [3]
    c.close()


# -- 14. absurd values are refused where given, and never break other shards --------------------------


@pytest.mark.parametrize("lease", [1e15, float("inf"), float("nan"), 0, -1])
def test_an_absurd_lease_is_refused_when_given(clock: FakeClock, lease: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        manager(memory_dataset(1, clock=clock), "w", lease_seconds=lease)


def test_the_cli_refuses_an_absurd_lease(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    out = subprocess.run(
        [sys.executable, "-m", "shardclaim", "claim", ds, "--lease-seconds", "1e15"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2  # a usage error
    assert "a week" in out.stderr
    assert "Traceback" not in out.stderr


def forge(store: Any, shard_id: int, change: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    key = f"shard_{shard_id:03d}/metadata.json"
    doc = {**orjson.loads(store.read(key).data), **change}
    store.write(key, orjson.dumps(doc), metadata=metadata)
    return key


def test_a_forged_endless_lease_breaks_nobody(clock: FakeClock) -> None:
    store = memory_dataset(3, clock=clock)
    endless = {"token": "ab", "worker": "evil", "lease_seconds": 1e15}
    forge(
        store, 1,
        {"status": "in_use", "assigned_to": "evil", "lease": endless},
        {"status": "in_use", "holder": "evil", "lease-seconds": "1e15"},
    )  # fmt: skip
    m = manager(store, "w")
    status = {s["shard_id"]: s for s in m.get_shard_status()}
    assert status[1]["status"] == "invalid"
    assert "lease_seconds" in status[1]["error"]
    assert m.reset_stale() == []
    got = {m.claim_shard()["shard_id"], m.claim_shard()["shard_id"]}  # type: ignore[index]
    assert got == {0, 2}
    m.close()


def test_a_metadata_value_of_the_wrong_type_is_refused_with_the_object_named(clock: FakeClock) -> None:
    store = memory_dataset(2, clock=clock)
    key = forge(store, 0, {"attempt": "abc"}, {"status": "available", "attempt": "abc"})
    m = manager(store, "w")
    with pytest.raises(MetadataError, match=key):
        m.read_shard(0)
    status = {s["shard_id"]: s for s in m.get_shard_status()}
    assert status[0]["status"] == "invalid"
    assert key in status[0]["error"]


def test_one_hostile_shard_never_makes_a_claim_raise(clock: FakeClock) -> None:
    store = memory_dataset(6, clock=clock)
    doc = orjson.loads(store.read("shard_003/metadata.json").data)
    doc["chunks"][0]["file"] = "../../etc/passwd"
    store.write("shard_003/metadata.json", orjson.dumps(doc), metadata={"status": "available"})
    for i in range(30):  # fresh managers draw candidates in fresh random orders
        m = manager(store, f"w{i}")
        shard = m.claim_shard()
        assert shard is not None
        assert shard["shard_id"] != 3
        m.release_shard(shard["shard_id"])
        m.close()
    m = manager(store, "loop")
    done = []
    for claim in m.claims():
        with claim:
            done.append(claim.shard_id)
    assert sorted(done) == [0, 1, 2, 4, 5]
    agg = summarize(m.get_shard_status())
    assert (agg["state"], agg["counts"]["invalid"]) == ("failed", 1)
    m.close()


# -- 11. a store outage of minutes is waited out ------------------------------------------------------


def test_a_patient_policy_waits_out_an_outage_longer_than_the_normal_budget() -> None:
    from shardclaim.errors import TransientStoreError
    from shardclaim.store.retry import RetryPolicy

    clock = FakeClock()
    policy = RetryPolicy(max_seconds=600, sleep=clock.sleep, clock=clock)
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        if clock.now < 1_800_000_300:  # down for the first 300 s
            raise TransientStoreError("read", "503")
        return "ok"

    assert policy.call(flaky) == "ok"
    assert calls[0] > 8  # more than the default budget of attempts
    assert max(clock.slept) <= 30
    clock.now = 1_800_000_000.0
    short = RetryPolicy(max_seconds=60, sleep=clock.sleep, clock=clock)
    with pytest.raises(TransientStoreError):
        short.call(flaky)
    assert clock.now - 1_800_000_000.0 <= 60 + 30


# -- breaks found by the hostile pass on the lease core ------------------------------------------------


@pytest.mark.parametrize("op", ["complete", "fail"])
def test_a_settling_write_whose_answer_was_lost_is_recognised_after_a_heartbeat(
    clock: FakeClock, op: str
) -> None:
    from shardclaim.errors import TransientStoreError
    from shardclaim.testing import LOSE_RESPONSE

    store = HookStore(memory_dataset(2, clock=clock))
    m = manager(store, "w", max_attempts=3)
    m.claim_shard(preferred_shard_id=0)
    store.before("write", LOSE_RESPONSE, key="shard_000")
    settle = (lambda: m.mark_completed(0)) if op == "complete" else (lambda: m.mark_failed(0, "x"))
    with pytest.raises(TransientStoreError):
        settle()
    m.renew_leases()  # the heartbeat finds out first that the write landed
    settle()  # the holder's retry: its own write, not a lost lease
    doc = m.read_shard(0)
    assert doc["status"] == ("completed" if op == "complete" else "available")
    assert doc.get("failures", 0) == (0 if op == "complete" else 1)  # never spent twice
    m.close()


def test_a_heartbeat_outlives_even_a_base_exception(clock: FakeClock) -> None:
    import asyncio

    store = HookStore(memory_dataset(2, clock=clock))
    m = manager(store, "w")
    m.claim_shard(preferred_shard_id=0)
    store.before("write", asyncio.CancelledError(), key="shard_000")
    m.renew_leases()  # must not raise
    m.renew_leases()
    m.mark_completed(0)
    ticks: queue.Queue[bool] = queue.Queue()
    done: queue.Queue[int] = queue.Queue()

    def beat() -> None:
        done.put(1)
        raise asyncio.CancelledError

    hb = Heartbeat(beat, 10.0, name="t", wait=lambda seconds: ticks.get())
    hb.start()
    for _ in range(2):
        ticks.put(False)
        assert done.get(timeout=60) == 1
    assert hb.alive
    ticks.put(True)
    hb.join()
    m.close()


def test_reset_of_one_shard_leaves_alone_a_completion_that_landed_after_it_judged(clock: FakeClock) -> None:
    store = HookStore(memory_dataset(2, clock=clock))
    holder = manager(store, "holder")
    holder.claim_shard(preferred_shard_id=0)
    operator = manager(store, "operator")
    store.before("write", lambda: holder.mark_completed(0), key="shard_000")
    assert operator.reset_shard(0) is False
    assert operator.read_shard(0)["status"] == "completed"
    holder.close()


def test_a_live_worker_s_shard_cannot_be_adopted_by_another_manager_with_its_id(clock: FakeClock) -> None:
    store = memory_dataset(1, clock=clock)
    worker = manager(store, "same-id")
    worker.claim_shard()
    with pytest.raises(LeaseLostError, match="worker's lease"):
        manager(store, "same-id").mark_completed(0)
    worker.mark_completed(0)
    worker.close()


def test_the_cli_cannot_complete_a_shard_a_running_worker_holds(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=4)
    worker = ShardManager(ds, "worker")
    worker.claim_shard()
    out = subprocess.run(
        [sys.executable, "-m", "shardclaim", "complete", ds, "--shard_id", "0"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "refused" in out.stderr
    worker.mark_completed(0)
    worker.close()


def test_a_shard_edited_in_place_shows_the_document_s_state(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    path = Path(ds) / "shard_000" / "metadata.json"
    doc = orjson.loads(path.read_bytes())
    with path.open("wb") as f:  # in place: the inode and its metadata attribute survive
        f.write(orjson.dumps({**doc, "status": "completed"}))
    m = ShardManager(ds, "w")
    assert [s["status"] for s in m.get_shard_status()] == ["completed", "available"]
    done = []
    for claim in m.claims():
        with claim:
            done.append(claim.shard_id)
    assert done == [1]
    m.close()


@pytest.mark.parametrize(
    "change", [{"attempt": 2**64 - 1}, {"failures": 2**64 - 1}, {"resume_chunk": 99}, {"heartbeats": 2**63}]
)
def test_a_counter_out_of_range_makes_only_its_shard_invalid(
    clock: FakeClock, change: dict[str, int]
) -> None:
    store = memory_dataset(3, clock=clock)
    forge(store, 1, change, {"status": "available"})
    for i in range(10):
        m = manager(store, f"w{i}")
        shard = m.claim_shard(preferred_shard_id=1)
        assert shard is not None
        assert shard["shard_id"] != 1
        m.release_shard(shard["shard_id"])
        assert {s["shard_id"]: s["status"] for s in m.get_shard_status()}[1] == "invalid"
        m.close()


def test_a_live_finalizer_is_not_overlapped_when_the_shards_change(clock: FakeClock) -> None:
    store = memory_dataset(2, clock=clock)
    settle_all(store)
    a, b, op = manager(store, "a"), manager(store, "b"), manager(store, "op")
    seen: list[str] = []

    def slow(agg: dict[str, Any]) -> None:
        op.reset_shard(1)  # the shards change while a's finalizer runs
        w = manager(store, "w")
        w.claim_shard(preferred_shard_id=1)
        w.mark_completed(1)
        w.close()
        assert finalize_once(b, lambda agg: seen.append("b")) == "running"  # a's lease is live
        seen.append("a")

    assert finalize_once(a, slow) == "ran"
    assert finalize_once(b, lambda agg: seen.append("b")) == "ran"  # the new state: run again
    assert seen == ["a", "b"]


def test_a_corrupt_marker_is_shown_and_replaced(clock: FakeClock) -> None:
    store = memory_dataset(1, clock=clock)
    settle_all(store)
    store.write(FINALIZE_KEY, b'{"status": "runn')
    m = manager(store, "w")
    assert m.finalizer_status()["status"] == "invalid"  # type: ignore[index]
    assert finalize_once(m, lambda agg: None) == "ran"
    assert marker(store)["status"] == "done"


def test_sigterm_to_run_stops_what_the_command_started(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=2)
    pidfile = tmp_path / "child.pid"
    cmd = f'sleep 300 & echo $! > "{pidfile}"; wait'
    run = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", ds, "--", "sh", "-c", cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(pidfile.exists, "the command to start its child")
        child = int(pidfile.read_text())
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 143
    finally:
        if run.poll() is None:
            run.kill()

    wait_for(lambda: process_gone(child), "the command's child to be stopped")
    assert ShardManager(ds, "o").read_shard(0)["status"] == "available"


# -- poison shards: holders that keep dying without progress (issue 11) ------------------------------


def test_a_shard_whose_holders_keep_dying_without_progress_ends_failed(clock: FakeClock) -> None:
    store = memory_dataset(2, clock=clock)
    for i in range(3):
        holder = manager(store, f"doomed{i}", max_expiries=3)
        assert holder.claim_shard(preferred_shard_id=0)["shard_id"] == 0  # type: ignore[index]
        holder.close()  # it dies without releasing
        clock.advance(61)
    # The third death without progress spends the budget: the next claim fails the shard, moves on.
    assert manager(store, "next", max_expiries=3).claim_shard(preferred_shard_id=0)["shard_id"] == 1  # type: ignore[index]
    doc = manager(store, "observer").read_shard(0)
    assert doc["status"] == "failed"
    assert "died 3 times without progress" in doc["last_error"]
    assert doc.get("failures", 0) == 0  # expiries have their own budget


def test_progress_between_expiries_starts_the_count_again(clock: FakeClock) -> None:
    store = memory_dataset(1, chunks_per_shard=5, clock=clock)
    for i in range(5):
        holder = manager(store, f"preempted{i}", max_expiries=2)
        shard = holder.claim_shard()
        assert shard is not None, f"round {i}: the shard was failed though every holder made progress"
        holder.checkpoint(0, i + 1)
        holder.close()  # preempted without notice, after making progress
        clock.advance(61)
    assert manager(store, "o").read_shard(0)["status"] == "in_use"


def test_a_release_never_counts_as_an_expiry(clock: FakeClock) -> None:
    store = memory_dataset(1, clock=clock)
    for i in range(5):
        holder = manager(store, f"w{i}", max_expiries=1)
        assert holder.claim_shard() is not None
        holder.release_shard(0)
        holder.close()
    doc = manager(store, "o").read_shard(0)
    assert (doc["status"], doc.get("expiries_without_progress", 0)) == ("available", 0)


def test_started_at_is_the_claim_s_time_not_the_previous_write_s(clock: FakeClock) -> None:
    store = memory_dataset(1, clock=clock)
    manager(store, "op").reset_shard(0)  # the shard's last write
    clock.advance(3)
    m = manager(store, "w")
    m.claim_shard()
    started = datetime.fromisoformat(m.read_shard(0)["started_at"]).timestamp()
    assert started == clock.now
    m.close()


def test_started_at_is_within_a_second_of_a_real_claim(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=2)
    ShardManager(ds, "op").reset_shard(0)
    time.sleep(1.5)  # real time must pass between the last write and the claim for this to mean anything
    m = ShardManager(ds, "w")
    before = time.time()
    m.claim_shard()
    started = datetime.fromisoformat(m.read_shard(0)["started_at"]).timestamp()
    assert abs(started - before) < 1.0
    m.close()
