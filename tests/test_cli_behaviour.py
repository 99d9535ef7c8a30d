"""A CLI that behaves like one (issue 11, points 7 and 9): --version, both spellings of every flag, usage
errors exit 2, missing credentials are one line with a hint, the seed's imports work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shardclaim
from shardclaim.testing import build_dataset

ROOT = Path(__file__).resolve().parent.parent


def shardclaim_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args],
        capture_output=True, text=True, timeout=300, check=False,
        env=env if env is not None else dict(os.environ),
    )  # fmt: skip


def test_version() -> None:
    result = shardclaim_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"shardclaim {shardclaim.__version__}")


def test_every_flag_takes_both_spellings(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    made = shardclaim_cli(
        "create", "--input-file", str(src), "--output-dir", str(tmp_path / "ds"), "--num-shards", "2",
        "--skip_invalid", "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["skipped_invalid"] == 1
    ran = shardclaim_cli(
        "run", str(tmp_path / "ds"), "--lease_seconds", "30", "--max_attempts", "2", "--max_expiries", "2",
        "--on_complete", "true", "--", "true",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    seed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "shard_manager.py"), "--dataset-dir", str(tmp_path / "ds"),
         "--action", "status"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert seed.returncode == 0, seed.stderr
    assert "succeeded: 2 shards" in seed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "DS", "-N", "0", "--", "true"], "-N"),
        (["run", "DS", "--lease-seconds", "1e15", "--", "true"], "a week"),
        (["run", "DS", "--max-attempts", "0", "--", "true"], "--max-attempts"),
        (["run", "DS", "--max-attempts", "10001", "--", "true"], "at most 10000"),
        (["run", "DS", "--lease-seconds", "0.00001", "--", "true"], "at least 0.1 s"),
        (["run", "DS", "--timeout", "nan", "--", "true"], "--timeout"),
        (["claim", "DS", "--lease_seconds", "-1"], "--lease"),
        (["create", "--input_file", "x", "--output_dir", "y", "--num_shards", "0"], "--num_shards"),
        (["create", "--input_file", "x", "--output_dir", "y", "--chunk_size_mb", "0"], "--chunk_size_mb"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_an_invalid_flag_value_is_a_usage_error(args: list[str], message: str) -> None:
    result = shardclaim_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_credentials_are_one_line_with_a_hint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "no-such-key.json")
    result = shardclaim_cli("status", "gs://some-bucket/ds", env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "gcloud auth application-default login" in result.stderr
    assert "GOOGLE_APPLICATION_CREDENTIALS" in result.stderr


def test_the_seed_python_api_imports_from_the_scripts(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "sharded_dataset"), tmp_path, shards=4, records=8)
    work = tmp_path / "extraction"
    work.mkdir()
    for name in ("shard_manager.py", "create_sharded_dataset.py"):
        shutil.copy(ROOT / "scripts" / name, work / name)  # copied beside the extraction script
    (work / "extract.py").write_text(
        textwrap.dedent(f"""
        from shard_manager import ShardManager
        from create_sharded_dataset import create_sharded_dataset

        manager = ShardManager({ds!r}, worker_id="worker_0")
        shard = manager.claim_shard()
        shard = manager.claim_shard(preferred_shard_id=3)
        chunk_files = shard["chunks"]
        manager.mark_completed(shard["shard_id"])
        statuses = manager.get_shard_status()
        print(len(chunk_files) > 0, sorted(s["status"] for s in statuses))
        """)
    )
    result = subprocess.run(
        [sys.executable, "extract.py"], cwd=work, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True ['available', 'available', 'completed', 'in_use']"


def test_run_help_lists_the_environment_the_command_gets() -> None:
    result = shardclaim_cli("run", "--help")
    for name in ("SHARDCLAIM_SHARD_ID", "SHARDCLAIM_CHUNKS", "SHARDCLAIM_CHECKPOINT_FILE", "VELDA_SHARD_ID"):
        assert name in result.stdout


def test_every_help_shows_the_defaults() -> None:
    """Every option of every command whose value has a default says which in its help, and the help
    that users read (the real `--help` output) shows it."""
    import argparse

    from shardclaim.cli import _parser

    def parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [p]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in set(action.choices.values()):
                    found += parsers(sub)
        return found

    def says_its_default(action: argparse.Action) -> bool:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return True  # nothing to say
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return True
        text = str(action.help)
        return "default" in text.lower() or f"({action.default})" in text

    silent = [
        f"{p.prog} {action.option_strings[0]} (default {action.default!r}): {action.help!r}"
        for p in parsers(_parser())
        for action in p._actions
        if not says_its_default(action)
    ]
    assert silent == []
    shown = shardclaim_cli("run", "--help").stdout
    assert "lease length in seconds (default: 60)" in " ".join(shown.split())
