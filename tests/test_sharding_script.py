"""The seed's end-to-end script, test_sharding.sh, runs green (CI runs it through this test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(workdir: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash") or "/bin/bash"
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [bash, str(ROOT / "test_sharding.sh"), str(workdir)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def test_test_sharding_sh_passes(tmp_path: Path) -> None:
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: sharding works" in result.stdout
    assert (tmp_path / "sharded_dataset" / "master_metadata.json").exists()


def test_test_sharding_sh_fails_when_a_step_is_wrong(tmp_path: Path) -> None:
    # A dataset already sits where the script builds: the create step must refuse, and the script fail.
    assert run_script(tmp_path).returncode == 0
    again = run_script(tmp_path)
    assert again.returncode != 0
    assert "already holds a dataset" in again.stderr
