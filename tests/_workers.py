"""Worker processes for the multi-process tests (top-level functions, so ``spawn`` can start them)."""

from __future__ import annotations

import time
from pathlib import Path

from shardclaim import LeaseLostError, ShardManager


def drain(url: str, worker_id: str, log_dir: str, work_seconds: float, lease_seconds: float) -> None:
    """Drain the dataset; log each claim before working and each *successful* completion after."""
    log = Path(log_dir)
    with ShardManager(url, worker_id, lease_seconds=lease_seconds, heartbeat_seconds=lease_seconds / 4) as m:
        for claim in m.claims():
            with claim:
                with (log / f"{worker_id}.claims").open("a") as f:
                    f.write(f"{claim.shard_id}\n")
                time.sleep(work_seconds)
            if claim.outcome == "completed":
                with (log / f"{worker_id}.completed").open("a") as f:
                    f.write(f"{claim.shard_id}\n")


def hold_then_complete(url: str, shard_id: int, lease_seconds: float, log_dir: str) -> None:
    """Claim ``shard_id``, say so, wait for the go file, then try to complete; write the outcome."""
    log = Path(log_dir)
    m = ShardManager(url, "paused-holder", lease_seconds=lease_seconds, heartbeat_seconds=lease_seconds / 4)
    shard = m.claim_shard(preferred_shard_id=shard_id)
    assert shard is not None
    assert shard["shard_id"] == shard_id
    (log / "claimed").write_text("yes")
    while not (log / "go").exists():
        time.sleep(0.02)
    try:
        m.mark_completed(shard_id)
        outcome = "completed"
    except LeaseLostError:
        outcome = "LeaseLostError"
    (log / "outcome").write_text(outcome)
    m.close()


def work_until_terminated(url: str, log_dir: str) -> None:
    """Claim through the worker loop and work 'forever' until SIGTERM arrives."""
    log = Path(log_dir)
    with ShardManager(url, "terminated", lease_seconds=60) as m:
        for claim in m.claims():
            with claim:
                (log / "working").write_text(str(claim.shard_id))
                time.sleep(300)


def slow_holders(url: str, worker_id: str, log_dir: str, work_seconds: float, lease_seconds: float) -> None:
    """Claim shards without heartbeats and work past the lease; log each completion that succeeded."""
    from shardclaim import ShardclaimError

    log = Path(log_dir)
    while True:
        m = ShardManager(url, worker_id, lease_seconds=lease_seconds, heartbeat_seconds=lease_seconds / 2)
        shard = m.claim_shard()
        m.close()  # no heartbeat: the lease runs out while the holder is still working
        if shard is None:
            if all(s["status"] == "completed" for s in m.get_shard_status()):
                return
            time.sleep(0.05)
            continue
        # Slow past the lease on a shard's first attempt, quick after: the job converges even while an
        # operator resets stale shards in a loop.
        time.sleep(work_seconds if shard["attempt"] == 1 else work_seconds / 10)
        try:
            m.mark_completed(shard["shard_id"])
        except (LeaseLostError, ShardclaimError):
            continue
        with (log / f"{worker_id}.completed").open("a") as f:
            f.write(f"{shard['shard_id']}\n")


def hold_until_lost_then_complete(url: str, worker_id: str, lease_seconds: float, log_dir: str) -> None:
    """Claim shard 0, say so; once the background heartbeat finds the lease lost, try to complete."""
    log = Path(log_dir)
    m = ShardManager(url, worker_id, lease_seconds=lease_seconds, heartbeat_seconds=lease_seconds / 4)
    shard = m.claim_shard(preferred_shard_id=0)
    assert shard is not None
    assert shard["shard_id"] == 0
    (log / "claimed").write_text("yes")
    deadline = time.monotonic() + 120
    while 0 not in m.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        m.mark_completed(0)
        outcome = "completed"
    except LeaseLostError:
        outcome = "LeaseLostError"
    (log / "outcome").write_text(outcome)
    m.close()


def steal_loop(url: str, worker_id: str, out_dir: str, seconds_per_record: float) -> None:
    """The documented loop with stealing on: each claim's record ids go to a file named by the claim,
    written whole once the claim completed (a claim that lost its lease leaves its file aside)."""
    out = Path(out_dir)
    with ShardManager(url, worker_id, lease_seconds=30, heartbeat_seconds=5) as m:
        for claim in m.claims(steal=True):
            ids = []
            with claim:
                for record in claim.records():
                    time.sleep(seconds_per_record)
                    ids.append(record["id"])
            suffix = "ids" if claim.outcome == "completed" else f"{claim.outcome}-ids"
            (out / f"{claim.name}.{worker_id}.{suffix}").write_text("".join(f"{i}\n" for i in ids))
