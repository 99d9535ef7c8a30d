"""The shardclaim command line, run as a user runs it: a real process."""

from __future__ import annotations

import json
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
    result = shardclaim("selftest", "s3://bucket/x")
    assert result.returncode == 1
    assert "S3 is not supported yet" in result.stderr
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
