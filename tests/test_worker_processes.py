"""The lease protocol with real processes on real stores: crashes, pauses and preemption."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import Counter
from pathlib import Path

from shardclaim import ShardManager
from shardclaim.status import summarize
from shardclaim.testing import build_dataset, wait_for
from tests import _workers


def test_16_workers_drain_200_shards_through_sigkills_exactly_once(shared_url: str, tmp_path: Path) -> None:
    url = build_dataset(shared_url, tmp_path, shards=200, records=200 * 2, chunk_size_mb=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")

    def start(name: str) -> mp.process.BaseProcess:
        p = ctx.Process(target=_workers.drain, args=(url, name, str(logs), 0.1, 3.0))
        p.start()
        return p

    workers = [start(f"w{i}") for i in range(16)]
    # Kill four workers while they hold a shard: right after each has logged a claim.
    victims = workers[:4]
    for i, p in enumerate(victims):
        wait_for((logs / f"w{i}.claims").exists, f"worker w{i} to claim")
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join()
    workers += [start(f"r{i}") for i in range(4)]  # restarted machines
    for p in workers[4:]:
        p.join(timeout=300)
        assert p.exitcode == 0

    completed = Counter(int(line) for f in logs.glob("*.completed") for line in f.read_text().split())
    assert set(completed.values()) == {1}  # no shard completed twice
    observer = ShardManager(url, "observer")
    for shard_id in set(range(200)) - set(completed):
        # A victim may die between its successful completion and its log line: the store says who.
        doc = observer.read_shard(shard_id)
        assert doc["status"] == "completed"
        assert doc["assigned_to"] in {"w0", "w1", "w2", "w3"}
    claims = Counter(int(line) for f in logs.glob("*.claims") for line in f.read_text().split())
    # What each killed worker held when it died (claimed, not completed by it) went to someone else.
    reclaimed = 0
    for name in ("w0", "w1", "w2", "w3"):
        claimed = {int(x) for x in (logs / f"{name}.claims").read_text().split()}
        done_file = logs / f"{name}.completed"
        done = {int(x) for x in done_file.read_text().split()} if done_file.exists() else set()
        for shard_id in claimed - done:
            if observer.read_shard(shard_id)["assigned_to"] == name:
                continue  # completed, then killed before the log line
            assert claims[shard_id] >= 2
            reclaimed += 1
    assert reclaimed >= 1  # reclaimed after the lease expired, with no reset
    status = observer.get_shard_status()
    assert summarize(status)["state"] == "succeeded"


def test_a_paused_holder_whose_shard_was_reclaimed_cannot_complete(shared_url: str, tmp_path: Path) -> None:
    url = build_dataset(shared_url, tmp_path, shards=2, records=2 * 2, chunk_size_mb=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    holder = ctx.Process(target=_workers.hold_then_complete, args=(url, 0, 2.0, str(logs)))
    holder.start()
    wait_for((logs / "claimed").exists, "the holder to claim shard 0")
    os.kill(holder.pid, signal.SIGSTOP)  # type: ignore[arg-type]
    peer = ShardManager(url, "peer", lease_seconds=2.0)
    taken: list[int] = []

    def peer_takes_shard_0() -> bool:
        shard = peer.claim_shard(preferred_shard_id=0)
        if shard is not None and shard["shard_id"] != 0:
            peer.release_shard(shard["shard_id"])
            return False
        if shard is not None:
            taken.append(0)
        return bool(taken)

    wait_for(peer_takes_shard_0, "the paused holder's lease to expire")
    (logs / "go").write_text("go")
    os.kill(holder.pid, signal.SIGCONT)  # type: ignore[arg-type]
    holder.join(timeout=60)
    assert (logs / "outcome").read_text() == "LeaseLostError"
    peer.mark_completed(0)
    doc = peer.read_shard(0)
    assert (doc["status"], doc["assigned_to"]) == ("completed", "peer")
    peer.close()


def test_sigterm_releases_the_lease_without_spending_an_attempt(tmp_path: Path) -> None:
    url = build_dataset(str(tmp_path / "ds"), tmp_path, shards=3, records=6, chunk_size_mb=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    worker = ctx.Process(target=_workers.work_until_terminated, args=(url, str(logs)))
    worker.start()
    wait_for((logs / "working").exists, "the worker to hold a shard")
    shard_id = int((logs / "working").read_text())
    assert ShardManager(url, "observer").read_shard(shard_id)["status"] == "in_use"
    os.kill(worker.pid, signal.SIGTERM)  # type: ignore[arg-type]
    worker.join(timeout=60)
    assert worker.exitcode != 0
    doc = ShardManager(url, "observer").read_shard(shard_id)
    assert (doc["status"], doc.get("failures", 0), doc["assigned_to"]) == ("available", 0, None)
    assert all(s["status"] == "available" for s in ShardManager(url, "o").get_shard_status())
