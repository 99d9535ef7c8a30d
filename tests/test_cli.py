"""The shardclaim command line, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def shardclaim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_selftest_races_processes_on_a_local_directory(tmp_path: Path) -> None:
    result = shardclaim("selftest", str(tmp_path / "demo"), "--processes", "4", "--rounds", "5")
    assert result.returncode == 0, result.stderr
    assert "exactly one winner every round" in result.stdout
    assert "OK: compare-and-swap holds" in result.stdout
    assert len(list((tmp_path / "demo").glob("selftest-*/create/round_*"))) == 5


def test_selftest_on_a_store_its_processes_cannot_write_says_why_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # the store's root lies under a file: every write fails
    result = shardclaim("selftest", str(tmp_path / "a-file" / "store"), "--processes", "2", "--rounds", "1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "racing process(es) failed" in result.stderr
    assert "not a directory" in result.stderr


def test_selftest_json_report(tmp_path: Path) -> None:
    result = shardclaim(
        "selftest", str(tmp_path), "--processes", "3", "--rounds", "4", "--increments", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["create"]["winners_per_round"] == [1, 1, 1, 1]
    assert report["counter"]["final_value"] == report["counter"]["reported_successes"] == 6


def test_a_bad_url_exits_non_zero_with_the_reason_on_stderr() -> None:
    result = shardclaim("selftest", "ftp://host/x")
    assert result.returncode == 1
    assert "unknown scheme 'ftp'" in result.stderr
    assert result.stdout == ""


def test_a_bad_option_exits_non_zero(tmp_path: Path) -> None:
    result = shardclaim("selftest", str(tmp_path), "--processes", "0")
    assert result.returncode == 2
    assert "--processes must be at least 1" in result.stderr


def test_the_console_script_is_installed() -> None:
    bindir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bindir / "shardclaim"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "selftest" in result.stdout


def test_the_seed_shard_manager_script_claims_reports_completes_and_resets(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"id": {i}}}\n' for i in range(40)))
    ds = str(tmp_path / "ds")
    assert (
        shardclaim("create", "--input_file", str(src), "--output_dir", ds, "--num_shards", "4").returncode
        == 0
    )
    script = [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "shard_manager.py")]

    def seed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script, "--dataset_dir", ds, *args], capture_output=True, text=True, check=False
        )

    claimed = seed("--action", "claim", "--worker_id", "machine0_host0", "--shard_id", "1")
    assert claimed.returncode == 0, claimed.stderr
    assert "Claimed shard 1 as machine0_host0" in claimed.stdout
    status = seed("--action", "status")
    assert "Shard 1: in_use (assigned to: machine0_host0)" in status.stdout
    assert "running: 4 shards" in status.stdout
    assert seed("--action", "complete", "--shard_id", "1").returncode == 0
    refused = seed("--action", "complete", "--shard_id", "1")
    assert refused.returncode == 1
    assert "refused" in refused.stderr
    assert seed("--action", "reset", "--shard_id", "1").returncode == 0
    unknown = seed("--action", "reset", "--shard_id", "9")
    assert unknown.returncode == 1
    assert "unknown shard id 9" in unknown.stderr


def test_claim_exits_non_zero_when_nothing_is_claimable(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n{"a": 2}\n')
    ds = str(tmp_path / "ds")
    shardclaim("create", "--input_file", str(src), "--output_dir", ds, "--num_shards", "2")
    assert shardclaim("claim", ds, "--worker_id", "a", "--shard_id", "0").returncode == 0
    assert shardclaim("claim", ds, "--worker_id", "b").returncode == 0
    none = shardclaim("claim", ds, "--worker_id", "c")
    assert none.returncode == 1
    assert "no shard is claimable" in none.stderr
    assert shardclaim("fail", ds, "--shard_id", "0", "--worker_id", "a", "--error", "boom").returncode == 0
    report = json.loads(shardclaim("status", ds, "--json").stdout)
    assert report["summary"]["counts"] == {"available": 1, "in_use": 1}
    assert [s["failures"] for s in report["shards"]] == [1, 0]
    assert shardclaim("reset", ds, "--failed").returncode == 0


def test_status_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    # `shardclaim status DS | head -1`: the reader goes away while status still prints. The reader here
    # closes its end before status writes anything, so the broken pipe happens on every run.
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"id": {i}}}\n' for i in range(300)))
    ds = str(tmp_path / "ds")
    made = shardclaim("create", "--input_file", str(src), "--output_dir", ds, "--num_shards", "300")
    assert made.returncode == 0, made.stderr

    for args in (["status", ds], ["status", ds, "--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = subprocess.run(
            [sys.executable, "-m", "shardclaim", *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        os.close(write_end)
        assert proc.stderr == "", proc.stderr
        assert proc.returncode == 141  # 128 + SIGPIPE, as a shell tool killed by the signal reports


def test_status_piped_into_head_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"id": {i}}}\n' for i in range(3000)))
    ds = str(tmp_path / "ds")
    made = shardclaim("create", "--input_file", str(src), "--output_dir", ds, "--num_shards", "3000")
    assert made.returncode == 0, made.stderr

    result = subprocess.run(
        ["/bin/sh", "-c", f'"{sys.executable}" -m shardclaim status "{ds}" | head -1'],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert result.stdout == "Shard 0: available\n"
    assert result.stderr == ""


def test_an_operating_system_error_is_a_message_and_exit_1_not_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n')
    result = shardclaim(
        "create", "--input_file", str(src), "--output_dir", "/proc/shardclaim-x", "--num_shards", "1"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("shardclaim: ")
    assert "/proc/shardclaim-x" in result.stderr


def test_the_command_line_loads_no_command_until_one_runs() -> None:
    """Building the parser imports no command's machinery: `shardclaim create` starts without the
    manager, the stores or the live view (each import is start-up time on every invocation)."""
    code = (
        "import sys, shardclaim.cli\n"
        "shardclaim.cli._parser()\n"  # every command's arguments and help, as any invocation builds them
        "print(sorted(m for m in sys.modules if m.startswith(('shardclaim.view', 'shardclaim.manager',"
        " 'shardclaim.status', 'shardclaim.lease', 'shardclaim.store', 'shardclaim.dataset'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def _build_with(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``script`` (a build with something broken first) run on a one-record input, its output in ds."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n')
    return subprocess.run(
        [sys.executable, "-c", script, str(src), str(tmp_path / "ds")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


_OUT_OF_MEMORY = """
import sys
import shardclaim.dataset

def no_memory(*args, **kwargs):
    raise MemoryError

shardclaim.dataset.create_sharded_dataset = no_memory  # as a builder under a memory limit fails
from shardclaim.cli import main
sys.exit(main(["create", "--input_file", sys.argv[1], "--output_dir", sys.argv[2]]))
"""


def test_running_out_of_memory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = _build_with(_OUT_OF_MEMORY, tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr == "shardclaim: out of memory\n", result.stderr
    assert not (tmp_path / "ds" / "master_metadata.json").exists()


_NO_THREAD = """
import sys
import threading
from shardclaim.cli import main

def no_thread(self):
    raise RuntimeError("can't start new thread")  # what threading raises under ulimit -v or -u

threading.Thread.start = no_thread
sys.exit(main(["create", "--input_file", sys.argv[1], "--output_dir", sys.argv[2], "--no-validate"]))
"""


def test_a_thread_that_cannot_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = _build_with(_NO_THREAD, tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("shardclaim: cannot start a thread"), result.stderr
    assert not (tmp_path / "ds" / "master_metadata.json").exists()


def test_other_runtime_errors_stay_tracebacks(tmp_path: Path) -> None:
    """Only the thread limit is translated: any other RuntimeError is a bug; its traceback is the report."""
    result = _build_with(_NO_THREAD.replace("can't start new thread", "something else broke"), tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "RuntimeError: something else broke" in result.stderr
