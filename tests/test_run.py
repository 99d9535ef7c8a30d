"""``shardclaim run``: any command as a shard worker, end to end with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from shardclaim import ShardManager, create_sharded_dataset

WORK = """
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
ids = []
for chunk in os.environ["SHARDCLAIM_CHUNKS"].splitlines():
    ids += [json.loads(line)["id"] for line in open(chunk)]
assert os.environ["VELDA_SHARD_ID"] == os.environ["SHARDCLAIM_SHARD_ID"]
assert json.loads(os.environ["SHARDCLAIM_CHUNKS_JSON"]) == os.environ["SHARDCLAIM_CHUNKS"].splitlines()
if os.environ["SHARDCLAIM_SHARD_ID"] == os.environ.get("FAIL_SHARD"):
    print("Traceback: pretend OOM on shard", os.environ["SHARDCLAIM_SHARD_ID"], file=sys.stderr)
    sys.exit(7)
name = f"shard_{os.environ['SHARDCLAIM_SHARD_ID']}.attempt_{os.environ['SHARDCLAIM_ATTEMPT']}.json"
(out / name).write_text(json.dumps(ids))
"""


@pytest.fixture
def ds(tmp_path: Path) -> str:
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(300)))
    url = str(tmp_path / "ds")
    create_sharded_dataset(str(src), url, num_shards=9, chunk_size_mb=0.001)
    return url


def run(ds: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, *args],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_three_workers_process_every_record_once(ds: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run(ds, "-N", "3", "--", sys.executable, "-c", WORK, str(out))
    assert result.returncode == 0, result.stderr
    assert "succeeded: 9 shards (9 completed); 300 records done" in result.stdout
    ids = [i for f in out.iterdir() for i in json.loads(f.read_text())]
    assert sorted(ids) == list(range(300))
    assert len(list(out.iterdir())) == 9


def test_a_failing_shard_spends_its_attempts_and_its_stderr_is_recorded(ds: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run(ds, "-N", "2", "--max-attempts", "2", "--", sys.executable, "-c", WORK, str(out),
                 env={"FAIL_SHARD": "4"})  # fmt: skip
    assert result.returncode == 1
    assert "failed: 9 shards (8 completed, 1 failed)" in result.stdout
    assert "pretend OOM on shard 4" in result.stderr  # passed through while it ran
    doc = ShardManager(ds, "observer").read_shard(4)
    assert (doc["status"], doc["failures"]) == ("failed", 2)
    assert "exited with 7" in doc["last_error"]
    assert "Traceback: pretend OOM on shard 4" in doc["last_error"]
    status = subprocess.run([sys.executable, "-m", "shardclaim", "status", ds], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert re.search(
        r"Shard 4: failed, attempt 2, 2 failed, [0-9.]+ s of compute; "
        r"last error: Traceback: pretend OOM on shard 4",
        status.stdout,
    )


def test_sigterm_releases_every_lease_without_spending_an_attempt(ds: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", ds, "-N", "2", "--", "sleep", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    observer = ShardManager(ds, "observer")
    deadline = time.monotonic() + 120
    while sum(s["status"] == "in_use" for s in observer.get_shard_status()) < 2:
        assert time.monotonic() < deadline, "two workers should hold a shard each"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    statuses = observer.get_shard_status()
    assert [s["status"] for s in statuses] == ["available"] * 9
    assert all(s["failures"] == 0 for s in statuses)


def test_run_without_a_command_is_a_clear_error(ds: str) -> None:
    result = run(ds, "-N", "2")
    assert result.returncode == 1
    assert "no command given" in result.stderr


def test_the_finalizer_runs_exactly_once_across_three_runs_of_two_workers(ds: str, tmp_path: Path) -> None:
    log = tmp_path / "finalized.log"
    cmd = [sys.executable, "-m", "shardclaim", "run", ds, "-N", "2",
           "--on-complete", f'echo "$SHARDCLAIM_STATE" >> {log}', "--", "true"]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert log.read_text() == "succeeded\n"
    marker = orjson.loads((Path(ds) / "_finalize.json").read_bytes())
    assert marker["status"] == "done"
    # The marker is part of the dataset: a rebuild with overwrite replaces it too.
    src = Path(ds).parent / "tasks.jsonl"
    create_sharded_dataset(str(src), ds, num_shards=3, overwrite=True)
    assert not (Path(ds) / "_finalize.json").exists()


def test_a_finalizer_whose_worker_dies_is_run_again_by_another(ds: str, tmp_path: Path) -> None:
    # The first finalizer records its worker's pid and hangs; the test kills that worker (and the hung
    # command). Another worker takes the marker over when the lease (2 s) expires and finalizes.
    started, done = tmp_path / "started", tmp_path / "done"
    script = (f'if [ -e {started} ]; then echo again >> {done}; '
              f'else echo "$PPID $$" > {started}; exec sleep 300; fi')  # fmt: skip
    cmd = [sys.executable, "-m", "shardclaim", "run", ds, "-N", "3", "--lease-seconds", "2",
           "--on-complete", script, "--", "true"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (started.exists() and len(started.read_text().split()) == 2):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker_pid, shell_pid = (int(x) for x in started.read_text().split())
    os.kill(worker_pid, signal.SIGKILL)
    os.kill(shell_pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert done.read_text() == "again\n", err
    assert orjson.loads((Path(ds) / "_finalize.json").read_bytes())["status"] == "done"


RESUMABLE = """
import json, os, pathlib, signal, sys, time
chunks = os.environ["SHARDCLAIM_CHUNKS"].splitlines()
log, meta = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
checkpoint = pathlib.Path(os.environ["SHARDCLAIM_CHECKPOINT_FILE"])
attempt = os.environ["SHARDCLAIM_ATTEMPT"]
for i in range(int(os.environ["SHARDCLAIM_RESUME_CHUNK"]), len(chunks)):
    with log.open("a") as f:
        f.write(f"{attempt} {i}\\n")
    checkpoint.write_text(str(i + 1))
    if attempt == "1" and i + 1 == 3:
        # Die with the worker once the store holds the checkpoint (polled from the plain JSON file).
        while json.loads(meta.read_text()).get("resume_chunk") != 3:
            time.sleep(0.01)
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_shard_resumes_after_the_last_checkpoint_of_a_killed_holder(tmp_path: Path) -> None:
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(b"".join(b'{"id": %3d, "pad": "%s"}\n' % (i, b"x" * 180) for i in range(50)))
    ds = str(tmp_path / "ds")
    create_sharded_dataset(str(src), ds, num_shards=1, chunk_size_mb=2100 / 2**20)
    assert ShardManager(ds, "o").read_shard(0)["num_chunks"] == 5
    log, meta = tmp_path / "log", Path(ds) / "shard_000" / "metadata.json"
    args = ["--lease-seconds", "2", "--", sys.executable, "-c", RESUMABLE, str(log), str(meta)]
    first = run(ds, *args)
    assert first.returncode != 0  # its only worker was killed with the shard unfinished
    second = run(ds, *args)
    assert second.returncode == 0, second.stderr
    assert log.read_text().split("\n")[:-1] == ["1 0", "1 1", "1 2", "2 3", "2 4"]
    doc = ShardManager(ds, "o").read_shard(0)
    assert (doc["status"], doc["attempt"]) == ("completed", 2)
    assert doc["resume_chunk"] >= 3


def test_the_split_process_merge_example_merges_every_row_once(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "split_process_merge.py"
    result = subprocess.run([sys.executable, str(example), str(tmp_path)], capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "results" / "merged.json").read_text())
    assert [r["id"] for r in merged["rows"]] == list(range(1000))


def test_progress_shows_shards_records_and_rate(ds: str) -> None:
    result = run(ds, "-N", "2", "--progress", "--", "sleep", "0.3")
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # text mode turned each \r into a line break
    assert last.startswith("\x1b[K9/9 shards done, 0 running, 0 failed; 300/300 records, ")
    assert last.endswith("/s, ETA 0s")


def test_a_command_that_cannot_start_spends_no_attempt_and_leaves_no_scratch(ds: str, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run(
        ds, "--max-attempts", "1", "--", str(tmp_path / "no-such-program"), env={"TMPDIR": str(scratch)}
    )
    assert result.returncode == 1
    assert "partial: 9 shards (9 available)" in result.stdout  # a worker fault: the shards are untouched
    assert "no-such-program" in result.stderr
    assert all(s["failures"] == 0 for s in ShardManager(ds, "o").get_shard_status())
    assert list(scratch.iterdir()) == []


def test_the_readme_s_complete_worker_processes_every_record_once(ds: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    example = root / "examples" / "process.py"
    assert example.read_text() in (root / "README.md").read_text()  # the README shows the tested file
    out = tmp_path / "out"
    result = run(ds, "-N", "3", "--", sys.executable, str(example), str(out))
    assert result.returncode == 0, result.stderr
    ids = [
        json.loads(line)["id"]
        for f in sorted(out.glob("shard_*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert sorted(ids) == list(range(300))
    assert not list(out.glob("*.partial.jsonl"))
