"""The typed public surface: exports, a misspelled name caught by the type checker, typed errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import shardclaim
from shardclaim import ShardclaimError, UnknownShardError
from shardclaim.testing import FakeClock, memory_dataset


def test_the_worker_loop_and_fan_in_names_are_exported() -> None:
    for name in ("Claim", "Preempted", "finalize_once", "ShardManager", "LeaseLostError"):
        assert name in shardclaim.__all__
        assert getattr(shardclaim, name) is not None


def test_a_misspelled_name_fails_mypy_strict(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text("import shardclaim\nshardclaim.ShardManager('x')\n")
    bad = tmp_path / "bad.py"
    bad.write_text("import shardclaim\nshardclaim.ShardManger('x')\n")
    ok = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(good)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout
    typo = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(bad)], capture_output=True, text=True, check=False
    )
    assert typo.returncode == 1
    assert 'has no attribute "ShardManger"' in typo.stdout


def test_an_unknown_shard_id_is_a_shardclaim_error_and_a_value_error() -> None:
    m = shardclaim.ShardManager("memory://api", "w", store=memory_dataset(3, clock=FakeClock()))
    with pytest.raises(UnknownShardError) as info:
        m.mark_completed(7)
    assert isinstance(info.value, ShardclaimError)
    assert isinstance(info.value, ValueError)
    assert (info.value.shard_id, info.value.num_shards) == (7, 3)


def test_what_the_seed_api_returns_is_typed(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text(
        "from shardclaim import ShardManager\n"
        "m = ShardManager('ds')\n"
        "shard = m.claim_shard()\n"
        "if shard is not None:\n"
        "    first: str = shard['chunks'][0]\n"
        "    n: int = shard['shard_id'] + 1\n"
        "for s in m.get_shard_status():\n"
        "    state: str = s['status']\n"
        "for claim in m.claims(handle_sigterm=False):\n"
        "    pass\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from shardclaim import ShardManager\n"
        "m = ShardManager('ds')\n"
        "shard = m.claim_shard()\n"
        "assert shard is not None\n"
        "shard['chunk']\n"
        "m.claims(handle_sigterms=False)\n"
    )
    ok = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(good)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout
    typo = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(bad)], capture_output=True, text=True, check=False
    )
    assert '"ClaimedShard" has no key "chunk"' in typo.stdout
    assert 'Unexpected keyword argument "handle_sigterms"' in typo.stdout
