"""Limits of the machine a build must live within: thousands of shards under the common open-file
limit (``ulimit -n 1024``), in a real process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from shardclaim import iter_shard_records

BASH = shutil.which("bash") or "/bin/bash"


def test_thousands_of_shards_build_under_ulimit_n_1024(tmp_path: Path) -> None:
    shards = 2048
    # 40 MB in records of 2 KB: each shard gets ~20 KB, more than its staging buffer, so every shard's
    # chunk file is written to long before the last one is closed.
    lines = [orjson.dumps({"i": i, "pad": "x" * (1500 + i % 1000)}) + b"\n" for i in range(20_000)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines))
    out = tmp_path / "ds"
    result = subprocess.run(
        [BASH, "-c", 'ulimit -n 1024 && exec "$0" "$@"', sys.executable, "-m", "shardclaim", "create",
         "--input_file", str(src), "--output_dir", str(out), "--num_shards", str(shards)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    master = orjson.loads((out / "master_metadata.json").read_bytes())
    assert master["num_shards"] == shards
    assert master["total_tasks"] == len(lines)
    chunks = sorted(out.glob("shard_*/chunk_*.jsonl"))
    assert len(chunks) == shards
    assert Counter(line for c in chunks for line in c.read_bytes().splitlines(True)) == Counter(lines)
    for shard in (0, 1, 1023, 1024, shards - 1):  # sizes and CRC32C as recorded
        assert (
            len(list(iter_shard_records(str(out), shard, parse=False)))
            == master["shards"][shard]["total_tasks"]
        )
