"""Each shard keeps its attempts; started_at and durations on the store's clock (issue 11, point 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shardclaim import ShardManager
from shardclaim.testing import FakeClock, build_dataset, memory_dataset


def manager(store: object, worker: str, **kw: object) -> ShardManager:
    return ShardManager("memory://h", worker, store=store, lease_seconds=60, **kw)  # type: ignore[arg-type]


def test_every_attempt_is_recorded_with_its_outcome_and_duration() -> None:
    clock = FakeClock()
    store = memory_dataset(1, clock=clock)
    w = manager(store, "w", max_attempts=5)
    w.claim_shard()
    clock.advance(7)
    w.mark_failed(0, "RuntimeError: boom\nmore lines")
    w.claim_shard()
    clock.advance(3)
    w.release_shard(0)
    w.claim_shard()
    w.close()  # dies: the next claim finds the lease expired
    clock.advance(61)
    peer = manager(store, "peer", max_attempts=5)
    peer.claim_shard()
    clock.advance(2)
    peer.mark_failed(0, "timed out after 2 s")
    peer.claim_shard()
    clock.advance(5)
    peer.mark_completed(0)
    attempts = peer.read_shard(0)["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "released", "expired", "timed out", "completed"]
    assert [a["duration_s"] for a in attempts] == [7.0, 3.0, 61.0, 2.0, 5.0]
    assert attempts[0]["error"] == "RuntimeError: boom"
    assert [a["worker"] for a in attempts] == ["w", "w", "w", "peer", "peer"]
    assert all(a["host"] for a in attempts)
    status = peer.get_shard_status()[0]
    assert status["compute_s"] == 78.0  # from the listing's cache, no read
    peer.close()


def test_history_keeps_the_last_twenty() -> None:
    store = memory_dataset(1, clock=FakeClock())
    w = manager(store, "w")
    for _ in range(25):
        w.claim_shard()
        w.release_shard(0)
    attempts = w.read_shard(0)["attempts"]
    assert len(attempts) == 20
    assert attempts[-1]["attempt"] == 25


def test_status_json_lists_every_shard_s_attempts(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=3, records=6)
    run = subprocess.run([sys.executable, "-m", "shardclaim", "run", ds, "--", "true"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = subprocess.run([sys.executable, "-m", "shardclaim", "status", ds, "--json"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    report = json.loads(out.stdout)
    assert [len(s["attempts"]) for s in report["shards"]] == [1, 1, 1]
    assert {s["attempts"][0]["outcome"] for s in report["shards"]} == {"completed"}
    assert report["summary"]["compute_seconds"] >= 0
    text = subprocess.run([sys.executable, "-m", "shardclaim", "status", ds], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert "s of compute" in text.stdout
