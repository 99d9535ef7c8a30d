"""Stealing with real processes on a real directory and on the GCS test server: four workers, one of
them eight times slower, run the documented loop with ``steal=True``; every record is processed by
exactly one claim that completed, the idle workers take parts of running shards, every shard completes."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import orjson

from shardclaim import ShardManager
from shardclaim.testing import build_dataset
from tests._workers import steal_loop


def test_idle_workers_take_the_tail_and_every_record_is_processed_once(
    shared_url: str, tmp_path: Path
) -> None:
    records = 240
    ds = build_dataset(shared_url, tmp_path, shards=4, records=records, chunk_size_mb=0.0005)
    m = ShardManager(ds, "observer")
    assert all(m.read_shard(i)["num_chunks"] >= 6 for i in range(4))
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    speeds = [0.04, 0.005, 0.005, 0.005]  # worker 0 is the straggler
    procs = [ctx.Process(target=steal_loop, args=(ds, f"w{i}", str(out), s)) for i, s in enumerate(speeds)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    done = [int(line) for f in out.glob("*.ids") for line in f.read_text().split()]
    assert sorted(done) == list(range(records))  # each record once, in completed claims only
    parts = [f.name for f in out.glob("*-c*.ids")]
    assert parts, "no worker took part of a running shard"
    docs = [m.read_shard(i) for i in range(4)]
    assert all(d["status"] == "completed" for d in docs)
    split = [d for d in docs if d.get("ranges")]
    assert split
    for d in split:
        assert all(p["status"] == "completed" for p in d["ranges"])
        assert orjson.dumps(d)  # a sound document


def test_run_per_chunk_lets_idle_workers_take_the_chunks_of_a_slow_shard(tmp_path: Path) -> None:
    import subprocess
    import sys

    records = 160
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=4, records=records, chunk_size_mb=0.0005)
    out = tmp_path / "out"
    out.mkdir()
    # Shard 0 is slow (as if its machine were); every run writes the records it got, tagged with its worker.
    cmd = (
        f'[ "$SHARDCLAIM_SHARD_ID" = 0 ] && sleep 0.4; '
        f'cat $SHARDCLAIM_CHUNKS > "{out}/$SHARDCLAIM_SHARD_ID.$SHARDCLAIM_CHUNK_RANGE.$SHARDCLAIM_WORKER_ID"'
        '; echo "ran $SHARDCLAIM_CHUNK_RANGE"'
    )
    result = subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, "-N", "4", "--per-chunk", "--", "sh", "-c", cmd],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ids = [orjson.loads(line)["id"] for f in out.iterdir() for line in f.read_bytes().splitlines()]
    assert sorted(ids) == list(range(records))  # every record once
    slow = {f.name.split(".", 2)[2] for f in out.glob("0.*")}
    assert len(slow) > 1, f"shard 0's chunks were all run by {slow}"
    ranges = sorted(tuple(int(x) for x in f.name.split(".")[1].split("-")) for f in out.glob("0.*"))
    assert all(b - a == 1 for a, b in ranges)  # one chunk per run
    # Each part keeps its own attempts and logs: `shardclaim logs --part START` prints the taker's runs.
    doc = ShardManager(ds, "observer").read_shard(0)
    taken = [p for p in doc["ranges"] if p["start"] > 0]
    assert taken
    start = taken[0]["start"]
    logs = subprocess.run(
        [sys.executable, "-m", "shardclaim", "logs", ds, "--shard_id", "0", "--part", str(start)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert logs.returncode == 0, logs.stderr
    assert f"ran {start}-{start + 1}" in logs.stdout
