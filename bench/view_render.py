"""What it costs to see a job of 10,000 shards: a ``status --watch`` refresh and the HTML report.

    python bench/view_render.py [--shards 10000] [--repeat 5] [--local]

Builds a job in a memory store on a fake clock (60 % of the shards completed, 200 running, 30 failed
after a retry, each completed shard with its attempt history), then times, as the median of --repeat runs:
one refresh of the live view (one listing and one clock read, then the 80x24 frame), the frame alone, the
one-line form, and the report (every shard's document read 16 at a time, then the page). Prints the
store requests of each (counted by shardclaim.testing.HookStore) and the page's size. With --local the
same objects are copied into a local directory first and the refresh and the report are timed there too
(a listing there is a walk of the shard directories, reading each object's cached metadata).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardclaim import ShardManager
from shardclaim.cli.report import build_report
from shardclaim.store.local import LocalStore
from shardclaim.testing import FakeClock, HookStore, memory_dataset
from shardclaim.view.follow import Follower
from shardclaim.view.frame import frame, line


def make_job(shards: int) -> Any:
    clock = FakeClock()
    store = memory_dataset(shards, clock=clock, chunks_per_shard=4)
    workers = [ShardManager("memory://b", f"host{i}-w", store=store, max_attempts=2) for i in range(50)]
    for k in range(int(shards * 0.6)):
        m = workers[k % len(workers)]
        shard = m.claim_shard()
        clock.advance(0.5)
        m.mark_completed(shard["shard_id"])  # type: ignore[index]
    for k in range(30):
        m = workers[k % len(workers)]
        for _ in range(2):
            shard = m.claim_shard()
            clock.advance(2)
            m.mark_failed(
                shard["shard_id"], f"Traceback (most recent call last):\n  ...\nValueError: row {k}"
            )  # type: ignore[index]
    for k in range(200):
        workers[k % len(workers)].claim_shard()
    clock.advance(5)
    return store


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(label: str, store: Any, repeat: int) -> None:
    counted = HookStore(store)
    reader = ShardManager(counted.url, "bench", store=counted)  # type: ignore[arg-type]
    opened = sum(counted.count.values())  # the master, read once when the dataset is opened
    follower = Follower(reader)
    follower.look()  # names the failures once (5 reads); later refreshes only list
    counted.count.clear()
    refresh, look = timed(follower.look, repeat)
    per_refresh = {k: v // repeat for k, v in counted.count.items()}
    drawn, lines = timed(lambda: frame(look, 80, 24, color=True), repeat)
    one_line, _ = timed(lambda: line(look), repeat)
    counted.count.clear()
    report, (page, _) = timed(lambda: build_report(reader), repeat)
    per_report = {k: v // repeat for k, v in counted.count.items()}
    n = len(look.snapshot.statuses)
    total = sum(per_report.values()) + opened
    print(f"{label}: {n:,} shards")
    print(f"  watch refresh (look + 80x24 frame): {1000 * (refresh + drawn):8.1f} ms  requests {per_refresh}")
    print(f"    the frame alone: {1000 * drawn:.1f} ms ({len(lines)} lines)")
    print(f"    the one-line form: {1000 * one_line:.2f} ms")
    print(f"  report: {1000 * report:8.1f} ms  requests {per_report} + {opened} master read")
    print(f"    = {total:,} requests (N + {total - n})")
    print(f"    page: {len(page.encode()) / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--local", action="store_true", help="also on a local directory")
    args = parser.parse_args()
    store = make_job(args.shards)
    measure("memory store", store, args.repeat)
    if args.local:
        with tempfile.TemporaryDirectory() as tmp:
            local = LocalStore(Path(tmp) / "ds", fsync=False)
            for info in store.list():
                obj = store.read(info.key)
                local.write(info.key, obj.data, metadata=obj.metadata)
            measure("local directory", local, args.repeat)


if __name__ == "__main__":
    main()
