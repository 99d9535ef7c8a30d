"""Hostile tests of chunk-range stealing (issue 12): each test documents a bug found by attacking the
feature with real processes, operator commands and hand-edited metadata. Each was committed as
``xfail(strict=True)``, failing because of the bug, and lost its marker when the bug was fixed."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardclaim import LeaseLostError, ShardManager
from shardclaim.testing import FakeClock, build_dataset, memory_dataset
from tests._workers import steal_loop


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def _split(ds: str) -> tuple[ShardManager, ShardManager]:
    """Shard 0 held by w1 (which reserved its first chunk), its untouched tail taken by w2."""
    a = ShardManager(ds, "w1", lease_seconds=60)
    b = ShardManager(ds, "w2", lease_seconds=60)
    assert a.claim_shard(0, parts=True) is not None
    a.reserve(0, 0, 1)
    taken = b.steal()
    assert taken is not None
    assert taken["range"][0] > 0
    return a, b


def test_cli_complete_is_refused_on_a_split_shard_held_by_workers(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=100, chunk_size_mb=0.0005)
    a, _ = _split(ds)
    result = _cli("complete", "--shard_id", "0", ds)  # a separate process, as an operator would run it
    doc = a.read_shard(0)
    # Whole shard, same situation: "refused: ... it is held by a worker's lease, not a CLI claim".
    assert result.returncode != 0, f"the CLI completed it: {result.stdout.strip()}"
    assert doc["status"] == "in_use", [(p["start"], p["end"], p["status"]) for p in doc["ranges"]]


def test_a_naive_renewed_at_is_refused_not_a_crash(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=100, chunk_size_mb=0.0005)
    _split(ds)
    path = tmp_path / "ds" / "shard_000" / "metadata.json"
    doc = json.loads(path.read_text())
    doc["ranges"][0]["renewed_at"] = "2020-01-01T00:00:00"  # hand-edited: no UTC offset
    path.write_text(json.dumps(doc))
    # A worker whose launcher index is 0 (RANK=0) tries shard 0 first; it must skip it, not die.
    m = ShardManager(ds, "w9", lease_seconds=60)
    claimed = m.claim_shard(0, parts=True)  # TypeError: can't subtract offset-naive and offset-aware
    assert claimed is None or claimed["shard_id"] == 1


def test_a_preempted_steal_loop_loses_no_record(tmp_path: Path) -> None:
    records = 100
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=records, chunk_size_mb=0.0005)
    m = ShardManager(ds, "observer")
    assert m.read_shard(0)["num_chunks"] >= 6
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    slow = ctx.Process(target=steal_loop, args=(ds, "slow", str(out), 0.05))
    slow.start()
    deadline = time.monotonic() + 120
    while int(m.read_shard(0).get("reserved_chunk") or 0) < 3:  # it is past its first chunks
        assert time.monotonic() < deadline
        assert slow.is_alive()
        time.sleep(0.02)
    assert slow.pid is not None
    os.kill(slow.pid, signal.SIGTERM)  # spot preemption: the shard is released, no attempt spent
    slow.join(timeout=120)
    assert m.read_shard(0)["status"] == "available"
    fast = ctx.Process(target=steal_loop, args=(ds, "fast", str(out), 0.0))
    fast.start()
    fast.join(timeout=300)
    assert fast.exitcode == 0
    assert m.read_shard(0)["status"] == "completed"
    done = sorted(int(line) for f in out.glob("*.ids") for line in f.read_text().split())
    assert done == list(range(records)), f"{records - len(set(done))} records never in a completed claim"


def test_a_part_renewed_on_schedule_is_not_reclaimed() -> None:
    clock = FakeClock()
    store = memory_dataset(1, chunks_per_shard=8, tasks_per_chunk=5, clock=clock, name="hb")

    def mgr(worker: str) -> ShardManager:
        return ShardManager("memory://hb", worker, store=store, lease_seconds=60, heartbeat_seconds=40)

    holder, idle, late = mgr("holder"), mgr("idle"), mgr("late")
    assert holder.claim_shard() is not None
    holder.reserve(0, 0, 1)
    assert idle.steal() is not None
    clock.now += 40  # one heartbeat interval: both holders renew, on schedule
    holder.renew_leases()
    idle.renew_leases()
    clock.now += 21  # 21 s after their last writes, well inside a 60 s lease
    assert late.claim_shard(parts=True) is None  # reclaims [0, 4) from its live holder
    try:
        holder.reserve(0, 1, 1)
    except LeaseLostError as e:
        pytest.fail(f"a live holder renewing on schedule was fenced: {e}")


def test_a_manager_does_not_take_a_second_part_of_a_shard_it_holds() -> None:
    store = memory_dataset(2, chunks_per_shard=8, tasks_per_chunk=5, clock=FakeClock(), name="two")
    a = ShardManager("memory://two", "a", store=store, lease_seconds=60)
    b = ShardManager("memory://two", "b", store=store, lease_seconds=60)
    first = a.claim_shard(0, parts=True)
    assert first is not None
    assert first["shard_id"] == 0
    a.reserve(0, 0, 1)
    taken = b.steal()
    assert taken is not None
    assert taken["range"] == [4, 8]
    b.release_shard(0)  # [4, 8) is free again
    again = a.claim_shard(0, parts=True)  # a worker thread of the same manager asks for work
    assert again is None or again["shard_id"] != 0, f"took {again and again.get('range')} of shard 0 too"
    assert a.reserve(0, 1, 1) == (2, 4)  # the first claim still writes to its own part [0, 4)


def test_a_part_with_a_renewed_at_in_the_future_is_refused_or_expires() -> None:
    from shardclaim.layout import MetadataError, check_shard
    from shardclaim.lease import shard as transitions

    clock = FakeClock()
    store = memory_dataset(1, chunks_per_shard=8, tasks_per_chunk=5, clock=clock, name="fut")

    def mgr(worker: str) -> ShardManager:
        return ShardManager("memory://fut", worker, store=store, lease_seconds=60)

    holder, idle = mgr("holder"), mgr("idle")
    assert holder.claim_shard() is not None
    holder.reserve(0, 0, 1)
    assert idle.steal() is not None
    key = "shard_000/metadata.json"
    obj = store.read(key)
    doc = json.loads(obj.data)
    doc["ranges"][0]["renewed_at"] = "9999-12-31T00:00:00+00:00"  # hand-edited
    data, meta = transitions.encode(doc)
    store.write(key, data, if_generation_match=obj.generation, metadata=meta)
    try:
        check_shard(key, json.loads(store.read(key).data))
    except MetadataError:
        return  # refused as hostile: what the promise asks
    holder.close()  # both holders die
    idle.close()
    clock.now += 7 * 24 * 3600  # a week later
    taken = [mgr("late").claim_shard(parts=True), mgr("later").claim_shard(parts=True)]
    ranges = sorted(tuple(c["range"]) for c in taken if c is not None)
    assert (0, 4) in ranges, f"the dead holder's part [0, 4) was never taken back (got {ranges})"


def test_per_chunk_checkpoint_past_the_given_chunk_is_not_recorded(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=100, chunk_size_mb=0.0005)
    m = ShardManager(ds, "observer")
    num_chunks = m.read_shard(0)["num_chunks"]
    assert num_chunks >= 6
    ran = tmp_path / "ran"
    ran.mkdir()
    once = tmp_path / "once"
    # The first run on chunk 0 (alone: SHARDCLAIM_CHUNK_RANGE=0-1) claims 5 chunks done, then is preempted.
    cmd = (
        f'touch "{ran}/$SHARDCLAIM_CHUNK_RANGE"; '
        f'if [ "$SHARDCLAIM_CHUNK_RANGE" = 0-1 ] && mkdir "{once}" 2>/dev/null; then '
        'echo 5 > "$SHARDCLAIM_CHECKPOINT_FILE"; exec sleep 60; fi'
    )
    argv = [sys.executable, "-m", "shardclaim", "run", ds, "--per-chunk", "--", "sh", "-c", cmd]
    err = tmp_path / "first.err"
    with err.open("wb") as stderr:
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    try:
        while not (ran / "0-1").exists():  # chunk 0's run has started
            assert first.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The worker reads the checkpoint file every 0.2 s: wait until it recorded it, or said it did not.
        settle = time.monotonic() + 60
        while int(m.read_shard(0).get("resume_chunk") or 0) == 0 and "not recorded" not in err.read_text():
            assert time.monotonic() < settle
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGTERM)  # preempted: CMD stopped, the shard released
        first.wait(timeout=60)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    assert m.read_shard(0)["status"] == "completed"
    done = sorted(int(f.name.split("-")[0]) for f in ran.iterdir())
    # Chunks 1-4 were never given to any run (and the first run on chunk 0 never finished).
    assert done == list(range(num_chunks)), f"chunks {sorted(set(range(num_chunks)) - set(done))} never ran"


def test_cli_complete_of_a_leaseless_part_does_not_complete_the_shard(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=100, chunk_size_mb=0.0005)
    _split(ds)
    path = tmp_path / "ds" / "shard_000" / "metadata.json"
    doc = json.loads(path.read_text())
    doc["ranges"][1]["lease"] = None  # hand-edited: in use by w2, no lease
    path.write_text(json.dumps(doc))
    _cli("complete", "--shard_id", "0", "--worker_id", "w2", ds)  # refused, or completes w2's part only
    doc = json.loads(path.read_text())
    assert doc["ranges"][0]["status"] == "in_use"  # w1 still holds [0, cut) and works on it
    assert doc["status"] == "in_use", f"the shard reads {doc['status']} while w1 works on chunks of it"
