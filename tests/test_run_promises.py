"""Issue 9's promises as ``shardclaim run`` keeps them, with real processes: the fan-in finalizer fenced
and re-armed, a command's leftovers not holding its shard, a store outage waited out."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from shardclaim import ShardManager
from shardclaim.fanin import FINALIZE_KEY
from shardclaim.store import open_store
from shardclaim.testing import build_dataset, wait_for


def run(
    ds: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, *args],
        capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_the_finalizer_runs_again_after_reset_failed_and_a_successful_re_run(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=3, records=30)
    merged = tmp_path / "merged.log"
    fail_one = 'if [ "$SHARDCLAIM_SHARD_ID" = "$FAIL_SHARD" ]; then exit 3; fi'
    on_complete = f'echo "$SHARDCLAIM_STATE" >> "{merged}"'
    first = run(ds, "--max-attempts", "1", "--on-complete", on_complete, "--", "sh", "-c", fail_one,
                env={"FAIL_SHARD": "1"})  # fmt: skip
    assert first.returncode == 1, first.stderr
    assert merged.read_text() == "failed\n"
    reset = subprocess.run([sys.executable, "-m", "shardclaim", "reset", ds, "--failed"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    second = run(ds, "--on-complete", on_complete, "--", "sh", "-c", fail_one, env={"FAIL_SHARD": "none"})
    assert second.returncode == 0, second.stderr
    assert merged.read_text() == "failed\nsucceeded\n"  # the merge saw the re-run shard


def test_a_failed_finalizer_is_shown_refused_again_and_re_run_after_reset(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    first = run(ds, "--on-complete", "echo merge broke >&2; exit 5", "--", "true")
    assert first.returncode == 1
    assert "--on-complete failed" in first.stderr
    status = subprocess.run(
        [sys.executable, "-m", "shardclaim", "status", ds], capture_output=True, text=True, check=False
    )
    assert "finalizer: failed" in status.stdout
    assert "(exit 5)" in status.stdout
    again = run(ds, "--on-complete", "true", "--", "true")
    assert again.returncode == 1
    assert "reset" in again.stderr
    assert "--finalizer" in again.stderr
    cleared = subprocess.run([sys.executable, "-m", "shardclaim", "reset", ds, "--finalizer"],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    assert run(ds, "--on-complete", "true", "--", "true").returncode == 0
    marker = orjson.loads(open_store(ds).read(FINALIZE_KEY).data)
    assert marker["status"] == "done"


def test_a_finalizer_taken_over_is_stopped_and_its_run_exits_non_zero(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    assert run(ds, "--", "true").returncode == 0  # every shard completed; nobody finalized yet
    out = tmp_path / "out"
    out.mkdir()
    # A's finalizer: records its worker's pid ($PPID of the shell), then works for a long time.
    slow = f'echo $PPID > "{out}/a.pid"; sleep 120; echo finished > "{out}/a.finished"'
    a = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", ds, "--lease-seconds", "2", "--on-complete", slow,
         "--", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for((out / "a.pid").exists, "A to start finalizing")
        worker = int((out / "a.pid").read_text())
        os.kill(worker, signal.SIGSTOP)  # A's worker stalls past its lease; its command goes on
        b = run(ds, "--lease-seconds", "2", "--on-complete", f'echo b > "{out}/b.done"', "--", "true")
        assert b.returncode == 0, b.stderr
        assert (out / "b.done").exists()
        os.kill(worker, signal.SIGCONT)
        _, a_err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 1, a_err
    assert "lost its lease" in a_err
    assert not (out / "a.finished").exists()  # its finalizer command was stopped, not left running
    marker = orjson.loads(open_store(ds).read(FINALIZE_KEY).data)
    assert marker["status"] == "done"


def test_a_background_process_holding_stderr_does_not_hold_the_shard(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = f'sleep 300 & echo $! > "{pids}/$SHARDCLAIM_SHARD_ID"; echo started >&2'
    # run's own output goes to files: a pipe here would be held open by the sleepers, as run's was.
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardclaim", "run", ds, "--", "sh", "-c", cmd], stdout=out, stderr=err
        )
        returncode = proc.wait(timeout=120)
    assert returncode == 0, (tmp_path / "err").read_text()
    alive = []
    for f in pids.iterdir():
        pid = int(f.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            alive.append(pid)
            os.kill(pid, signal.SIGKILL)
    # run returned while the processes that held its stderr pipe were still alive: it did not wait.
    assert len(alive) == 2


@pytest.mark.gcs
def test_a_fleet_waits_out_a_store_outage_longer_than_the_retry_budget(
    proxy,
    gcs_bucket: str,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    url = build_dataset(f"gs://{gcs_bucket}/ds", tmp_path, shards=6, records=12, chunk_size_mb=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = f'touch "{marks}/$SHARDCLAIM_SHARD_ID"; sleep 1'
    env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", url, "-N", "2", "--lease-seconds", "10",
         "--", "sh", "-c", cmd],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: len(list(marks.iterdir())) >= 2, "the first shards to start")
        proxy.down = True  # 35 s: longer than the ~25 s a single request retries by default
        time.sleep(35)
        proxy.down = False
        _, err = worker.communicate(timeout=300)
    finally:
        proxy.down = False
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    statuses = ShardManager(url, "observer").get_shard_status()
    assert {s["status"] for s in statuses} == {"completed"}
    assert "the store has failed for" in err
    assert "answers again" in err
