"""Reader speed: a shard's records through ``iter_shard_records`` against plain line reads of its chunks.

    python bench/read_speed.py [--small-mb 512] [--rounds 5] [--dir DIR]

Builds one shard of 100 MiB chunks from the small-record input of ``build_speed.py`` (about 470-byte
lines, cached in DIR) and, round by round from the page cache, times in this process:

- ``for line in open(chunk)``: each chunk file's lines, unchecked (the baseline);
- ``iter_shard_records(parse=False, verify=False)``: the reader's lines, unchecked;
- ``iter_shard_records(parse=False)``: checked (size and CRC32C; a chunk over 64 MiB read twice, each
  block of the second read held to the first's, see ``shardclaim/dataset/verified.py``);
- ``iter_shard_records()``: checked and parsed.

Prints medians and each one's median ratio to the baseline in the same round.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from build_speed import BENCH_DIR, input_file

from shardclaim import create_sharded_dataset, iter_shard_records


def plain(ds: Path) -> int:
    count = 0
    for chunk in sorted((ds / "shard_000").glob("chunk_*.jsonl")):
        with chunk.open("rb") as f:
            for _ in f:
                count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    src = input_file(args.dir, args.small_mb, "small")
    ds = args.dir / "read_ds"
    shutil.rmtree(ds, ignore_errors=True)
    create_sharded_dataset(str(src), str(ds), num_shards=1, chunk_size_mb=100)  # validated, as by default
    plain(ds)  # into the page cache
    url = str(ds)
    ways = {
        "plain line reads": lambda: plain(ds),
        "reader, unchecked": lambda: sum(1 for _ in iter_shard_records(url, 0, parse=False, verify=False)),
        "reader, checked": lambda: sum(1 for _ in iter_shard_records(url, 0, parse=False)),
        "reader, checked, parsed": lambda: sum(1 for _ in iter_shard_records(url, 0)),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(args.rounds):
        counts = set()
        for name, way in ways.items():
            t = time.perf_counter()
            counts.add(way())
            times[name].append(time.perf_counter() - t)
        assert len(counts) == 1, counts  # every way read every record
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    size = sum(p.stat().st_size for p in (ds / "shard_000").glob("chunk_*.jsonl"))
    print(f"\n{size / 2**20:.0f} MiB, {counts.pop():,} records; median of {args.rounds} rounds:")
    base = times["plain line reads"]
    for name, samples in times.items():
        ratio = statistics.median(t / b for t, b in zip(samples, base, strict=True))
        rate = size / 2**20 / statistics.median(samples)
        print(f"  {name:26s} {statistics.median(samples):6.2f} s  {rate:7.0f} MiB/s  {ratio:5.2f}x plain")
    shutil.rmtree(ds, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
