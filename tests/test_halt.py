"""The fleet-wide halt (issue 11, point 2): once K shards failed, nothing new starts anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shardclaim import ShardManager
from shardclaim.fanin import finalize_once
from shardclaim.status import summarize
from shardclaim.testing import FakeClock, build_dataset, memory_dataset


def test_k_failed_shards_halt_every_worker_until_reset_failed() -> None:
    store = memory_dataset(5, clock=FakeClock())
    a = ShardManager("memory://h", "a", store=store, max_attempts=1, max_failed_shards=2)
    b = ShardManager("memory://h", "b", store=store)
    held = b.claim_shard()
    assert held is not None
    for _ in range(2):
        shard = a.claim_shard()
        assert shard is not None
        a.mark_failed(shard["shard_id"], "boom")
    assert a.claim_shard() is None  # the listing that looked for work found the halt
    c = ShardManager("memory://h", "c", store=store)  # another machine, with no limit of its own
    assert c.claim_shard() is None
    assert summarize(c.get_shard_status(), halted=c.halt is not None)["state"] == "running"  # b's shard runs
    b.mark_completed(held["shard_id"])  # running shards finish
    assert summarize(c.get_shard_status(), halted=c.halt is not None)["state"] == "halted"
    assert finalize_once(c, lambda agg: None) == "halted"  # no fan-in on a halted job
    failed = [s["shard_id"] for s in c.get_shard_status() if s["status"] == "failed"]
    assert sorted(c.reset_failed()) == sorted(failed)
    assert c.claim_shard() is not None  # lifted
    assert c.halt is None
    for m in (a, b, c):
        m.close()


def run(ds: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, *args],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ),
    )  # fmt: skip


def test_a_halt_stops_run_refuses_a_second_run_and_reset_failed_lifts_it(
    shared_url: str, tmp_path: Path
) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=6, records=12)
    first = run(ds, "--max-failed-shards", "2", "--max-attempts", "1", "--max-consecutive-failures", "10",
                "--", "sh", "-c", "exit 1")  # fmt: skip
    assert first.returncode == 1
    assert first.stdout.startswith("halted:")
    statuses = [s["status"] for s in ShardManager(ds, "o").get_shard_status()]
    assert sorted(statuses) == ["available"] * 4 + ["failed"] * 2  # nothing new started after the halt
    second = run(ds, "--", "true")  # another process, no limit of its own
    assert second.returncode == 1
    assert "HALTED: 2 shards failed (limit 2)" in second.stderr
    status = subprocess.run(
        [sys.executable, "-m", "shardclaim", "status", ds], capture_output=True, text=True, check=False
    )
    assert "HALTED" in status.stdout
    assert "last error" in status.stdout
    reset = subprocess.run([sys.executable, "-m", "shardclaim", "reset", ds, "--failed"], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    third = run(ds, "--", "true")
    assert third.returncode == 0, third.stderr
    assert {s["status"] for s in ShardManager(ds, "o").get_shard_status()} == {"completed"}


def test_a_dataset_with_a_halt_and_run_state_can_be_rebuilt_with_overwrite(
    shared_url: str, tmp_path: Path
) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=3, records=6)
    halted = run(
        ds, "--max-failed-shards", "1", "--max-attempts", "1", "--on-complete", "true", "--", "false"
    )
    assert halted.returncode == 1
    src = tmp_path / "again.jsonl"
    src.write_text("".join(f'{{"id": {i}}}\n' for i in range(9)))
    rebuilt = subprocess.run(
        [sys.executable, "-m", "shardclaim", "create", "--input_file", str(src), "--output_dir", ds,
         "--num_shards", "3", "--overwrite"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    fresh = ShardManager(ds, "o")
    assert {s["status"] for s in fresh.get_shard_status()} == {"available"}
    assert fresh.halt is None  # the old run's halt went with the old dataset
    assert fresh.finalizer_status() is None


def test_a_restarted_pod_with_a_launcher_index_starts_nothing_on_a_halted_job() -> None:
    from shardclaim.lease import halt

    store = memory_dataset(6, clock=FakeClock())
    halt.trip(store, [0, 1], 2, "someone")
    m = ShardManager("memory://h", "pod-3", store=store)
    assert m.claim_shard(preferred_shard_id=3) is None
    import pytest

    from shardclaim.errors import JobHaltedError

    with pytest.raises(JobHaltedError, match="HALTED"):
        for _claim in m.claims(handle_sigterm=False):
            pass
    m.close()


def test_a_corrupt_halt_object_reads_as_no_halt_and_is_replaced() -> None:
    from shardclaim.lease import halt

    store = memory_dataset(3, clock=FakeClock())
    store.write(halt.HALT_KEY, b"[1, 2]")
    m = ShardManager("memory://h", "w", store=store, max_attempts=1, max_failed_shards=1)
    assert m.get_shard_status()
    assert m.halt is None
    shard = m.claim_shard()
    assert shard is not None
    m.mark_failed(shard["shard_id"], "boom")  # the one failure trips a halt over the corrupt object
    m.get_shard_status()
    assert m.halt is not None
    assert m.reset_failed() == [shard["shard_id"]]
    assert halt.halted(store, store.list(prefix="_halt/")[0]) is None
    m.close()
