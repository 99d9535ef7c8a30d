"""What one listing of a dataset costs on S3, where a listing carries no user metadata.

    python bench/s3_listing.py [--shards 10000] [--chunks-per-shard 1] [--changed 100] [--endpoint URL]

Fills a bucket with ``--shards`` shard objects (``shard_NNNNN/metadata.json`` with the builder's listing
metadata) and ``--chunks-per-shard`` chunk objects each, then counts the requests and times:

* a *cold* listing by a new store (a new process: ``shardclaim status``, a worker's first claim): the
  LIST pages, plus one HEAD per shard object, 32 at a time;
* a *warm* listing by the same store with nothing changed (a worker refreshing its candidates): the pages;
* a listing after ``--changed`` shards were written by another client: the pages, plus that many HEADs;
* ``ShardManager.get_shard_status()`` in a new process, the whole protocol path (one listing, one clock
  read), and the baseline it replaces where metadata cannot be listed: one GET per shard, one at a time.

Without ``--endpoint`` it starts moto's server on a loopback port (the test extra), so the seconds are
moto's — one Python process answering some hundreds of requests a second on one core — and the request
counts are what S3 itself would be sent. With ``--endpoint`` (and AWS credentials) it measures a real
S3-compatible endpoint, in a bucket it creates and leaves to you to delete.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto's server did not start")


class Count:
    """S3 operations sent by one client, by name."""

    def __init__(self, client: Any) -> None:
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.sent[model.name] += 1

    def take(self) -> str:
        with self._lock:
            sent, self.sent = self.sent, Counter()
        return ", ".join(f"{n} {op}" for op, n in sorted(sent.items())) or "none"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def fill(bucket: str, shards: int, chunks: int) -> None:
    from shardclaim.dataset.output import LISTED
    from shardclaim.store.s3 import S3Store

    store = S3Store(bucket, "ds")

    def one(i: int) -> None:
        store.write(f"shard_{i:05d}/metadata.json", b'{"shard_id": %d}' % i, metadata=LISTED)
        for c in range(chunks):
            store.write(f"shard_{i:05d}/chunk_{c:04d}.jsonl", b"{}\n")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(shards)))


STATUS = """
import sys, time
from shardclaim.store.s3 import S3Store
from shardclaim.store import RetryingStore
from shardclaim.lease.views import read_views
store = S3Store(sys.argv[1], "ds")
sent = []
store.client.meta.events.register("before-call.s3", lambda model, **_: sent.append(model.name))
dirs = [f"shard_{i:05d}" for i in range(int(sys.argv[2]))]
t = time.perf_counter()
views = read_views(RetryingStore(store), dirs, 60.0)
store.now()
took = time.perf_counter() - t
from collections import Counter
shown = ", ".join(f"{n} {s}" for s, n in sorted(Counter(v.status for v in views).items()))
requests = ", ".join(f"{n} {op}" for op, n in sorted(Counter(sent).items()))
print(f"{took:.2f} s, requests: {requests} ({shown})")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--chunks-per-shard", type=int, default=1)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--get-sample", type=int, default=300, help="GETs timed for the baseline")
    parser.add_argument("--endpoint", help="an S3-compatible endpoint (default: start moto's server)")
    args = parser.parse_args()

    server = None
    if args.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    else:
        port = free_port()
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - moto accepts any
            AWS_DEFAULT_REGION="us-east-1",
        )
        server = start_moto(port)
    try:
        run(args)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def run(args: argparse.Namespace) -> None:
    from shardclaim.store.s3 import S3Store, default_client

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    default_client().create_bucket(Bucket=bucket)
    objects = args.shards * (1 + args.chunks_per_shard)
    where = args.endpoint or "moto's server on loopback"
    print(f"{args.shards} shards, {objects} objects under the prefix, on {where}")
    _, took = timed(lambda: fill(bucket, args.shards, args.chunks_per_shard))
    print(f"  filled in {took:.1f} s ({objects / took:.0f} writes/s, 32 threads)")

    store = S3Store(bucket, "ds")
    count = Count(store.client)

    def listing() -> list[Any]:
        return store.list(suffix="/metadata.json")

    listed, cold = timed(listing)
    assert len(listed) == args.shards
    assert all(o.metadata.get("status") == "available" for o in listed)
    print(f"cold listing (a new process):  {cold:7.2f} s   {count.take()}")
    _, warm = timed(listing)
    print(f"warm listing, nothing changed: {warm:7.2f} s   {count.take()}")
    other = S3Store(bucket, "ds")
    in_use = {"status": "in_use", "holder": "w"}
    for i in range(args.changed):
        other.write(f"shard_{i:05d}/metadata.json", b'{"shard_id": %d, "again": 1}' % i, metadata=in_use)
    _, changed = timed(listing)
    print(f"after {args.changed} shards changed:   {changed:7.2f} s   {count.take()}")

    # The whole path, in a new process: shard views from one listing plus the store's clock.
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-c", STATUS, bucket, str(args.shards)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    print(f"status of every shard (new process, read_views + now): {done.stdout.strip()}")

    # Baseline: no metadata in the listing and no cache — one GET per shard, one at a time.
    sample = min(args.get_sample, args.shards)
    _, reads = timed(lambda: [store.read(f"shard_{i:05d}/metadata.json") for i in range(sample)])
    per_get = reads / sample
    pages = math.ceil(objects / 1000)
    print(
        f"baseline, one GET per shard in turn: {args.shards} GETs + {pages} LISTs, "
        f"about {per_get * args.shards + warm:.1f} s ({per_get * 1000:.1f} ms per GET, {sample} timed)"
    )
    print(f"cold listing against the baseline: {cold / (per_get * args.shards + warm):.2f}x the time")


if __name__ == "__main__":
    main()
