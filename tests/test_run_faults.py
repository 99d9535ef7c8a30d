"""Worker faults are not shard faults; a per-shard timeout (issue 11, points 1 and 4). Real `run`
processes on a local directory and on the GCS test server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardclaim import ShardManager
from shardclaim.testing import build_dataset


def run(ds: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, *args],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ),
    )  # fmt: skip


def docs(ds: str) -> list[dict[str, object]]:
    m = ShardManager(ds, "observer")
    return [dict(m.read_shard(i)) for i in range(m.num_shards)]


@pytest.mark.parametrize("command", [["pyhton", "process.py"], ["sh", "-c", "pyhton process.py"]])
def test_a_command_that_cannot_start_spends_no_attempt_and_stops_the_workers(
    shared_url: str, tmp_path: Path, command: list[str]
) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=4, records=8)
    result = run(ds, "-N", "2", "--", *command)
    assert result.returncode != 0
    assert "pyhton" in result.stderr
    assert "no attempt spent" in result.stderr
    assert all(d["status"] == "available" for d in docs(ds))
    assert all(d.get("failures", 0) == 0 for d in docs(ds))


def test_a_shard_whose_command_exits_127_ends_under_a_restart_loop(tmp_path: Path) -> None:
    """Exit 127 reads as "cannot start" (no attempt spent, the worker stops), but a command may exit 127
    on one shard's data alone: under a supervisor that restarts `run`, that shard would be claimed and
    released for ever. After 3 such releases the next one counts as the shard's failure."""
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=4, records=8)
    only_shard_2 = '[ "$SHARDCLAIM_SHARD_ID" != 2 ] || exit 127'
    restarts = 0
    while restarts < 10:  # the supervisor
        restarts += 1
        result = run(ds, "--max-attempts", "1", "--", "sh", "-c", only_shard_2)
        if (
            result.returncode == 1
            and "cannot start" not in result.stderr
            and "no attempt spent" not in (result.stderr)
        ):
            break
    else:
        pytest.fail(f"still not settled after {restarts} restarts: {result.stderr[-2000:]}")
    by_id = {d["shard_id"]: d for d in docs(ds)}
    assert [by_id[i]["status"] for i in range(4)] == ["completed", "completed", "failed", "completed"]
    assert "127" in str(by_id[2]["last_error"])
    outcomes = [a["outcome"] for a in by_id[2]["attempts"]]
    assert outcomes.count("cannot start") == 3
    assert by_id[2]["cannot_start"] == 3


def test_a_worker_that_fails_shards_in_a_row_stops_claiming(shared_url: str, tmp_path: Path) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=6, records=12)
    result = run(ds, "--max-attempts", "10", "--max-consecutive-failures", "3", "--", "sh", "-c", "exit 1")
    assert result.returncode != 0
    assert "failed 3 shards in a row" in result.stderr
    # It stopped at the third distinct shard (a shard drawn again counts once).
    assert sum(1 for d in docs(ds) if int(d.get("failures", 0)) > 0) == 3


def test_success_in_between_resets_the_count(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=6, records=12)
    count = tmp_path / "count"
    count.write_text("0")
    # Every other attempt fails, whatever order the shards come in: fail, succeed, fail, succeed ...
    flaky = f'n=$(cat "{count}"); echo $((n + 1)) > "{count}"; [ $((n % 2)) = 1 ]'
    result = run(ds, "--max-attempts", "1", "--max-consecutive-failures", "2", "--", "sh", "-c", flaky)
    assert "in a row" not in result.stderr
    assert sorted(str(d["status"]) for d in docs(ds)) == ["completed"] * 3 + ["failed"] * 3


def test_an_attempt_past_its_timeout_is_stopped_and_failed(shared_url: str, tmp_path: Path) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=1, records=2)
    result = run(ds, "--timeout", "1", "--max-attempts", "1", "--", "sleep", "300")
    assert result.returncode == 1
    (doc,) = docs(ds)
    assert doc["status"] == "failed"
    assert str(doc["last_error"]).startswith("timed out after 1 s")
    status = subprocess.run(
        [sys.executable, "-m", "shardclaim", "status", ds], capture_output=True, text=True, check=False
    )
    assert "timed out after 1 s" in status.stdout


def test_a_bad_timeout_is_refused(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=2)
    result = run(ds, "--timeout", "0", "--", "true")
    assert result.returncode != 0
    assert "--timeout" in result.stderr
