"""Every attempt's output is kept and read back (issue 11, point 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shardclaim.attempt_log import AttemptLog
from shardclaim.store.memory import MemoryStore
from shardclaim.testing import build_dataset

LOUD = """import sys
for i in range(20000):
    print(i, file=sys.stderr if i % 2 else sys.stdout)
sys.exit(3)
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args], capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ),
    )  # fmt: skip


def test_the_whole_output_of_every_failed_attempt_is_read_back(shared_url: str, tmp_path: Path) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=1, records=2)
    script = tmp_path / "loud.py"
    script.write_text(LOUD)
    run = cli("run", ds, "--max-attempts", "2", "--", sys.executable, str(script))
    assert run.returncode == 1
    for attempt in ("1", "2"):
        logs = cli("logs", ds, "--shard_id", "0", "--attempt", attempt)
        assert logs.returncode == 0, logs.stderr
        assert sorted(int(x) for x in logs.stdout.split()) == list(range(20000))  # stdout and stderr, all
    latest = cli("logs", ds, "--shard-id", "0", "--follow")  # the attempt is over: prints and returns
    assert latest.returncode == 0
    assert len(latest.stdout.split()) == 20000
    assert cli("logs", ds, "--shard_id", "0", "--attempt", "3").returncode == 1


def test_with_several_workers_each_line_is_tagged_with_its_shard(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=4, records=8)
    run = cli("run", ds, "-N", "2", "--", "sh", "-c", 'echo "hello from $SHARDCLAIM_SHARD_ID"')
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if "hello" in line]
    assert sorted(lines) == [f"[shard {i}] hello from {i}" for i in range(4)]
    logs = cli("logs", ds, "--shard_id", "2")
    assert logs.stdout == "hello from 2\n"  # the log itself is untagged


def test_a_log_past_its_bound_keeps_its_head_and_tail_and_says_what_it_left_out() -> None:
    store = MemoryStore("logs")
    record = AttemptLog(store, "_logs/shard_000/attempt_001.log", limit=10, tail=5, interval=3600)
    for i in range(10):
        record.write(f"{i:02d}|".encode())
    record.close()
    data = store.read("_logs/shard_000/attempt_001.log").data
    assert data.startswith(b"00|01|02|0")
    assert b"[... shardclaim: 15 bytes of output left out ...]" in data
    assert data.endswith(b"8|09|")
