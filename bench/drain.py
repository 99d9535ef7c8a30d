"""Claiming under contention: 32 processes drain 1,000 shards, and the cost of one status call.

    python bench/drain.py [--processes 32] [--shards 1000] [--work 0.02] [--status-shards 10000]

For the local directory and the GCS test server (fake-gcs-server on loopback, started here): every
process loops claim -> sleep(--work) -> complete until nothing is left. Prints store requests per
successful claim (counted by a wrapper around the store: reads, writes, list pages, clock reads),
duplicate completions (must be 0), and the drain time against the ideal (shards x work / processes).
Then builds a dataset of --status-shards shards on the GCS test server and counts the HTTP requests of
one ``get_shard_status()`` through a counting proxy. Needs the test extra installed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from shardclaim import ShardManager, create_sharded_dataset
from shardclaim.store import RetryingStore, open_store


class Counting:
    """Counts the store requests a manager makes (a listing counts one per page of 1,000)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests = 0

    @property
    def url(self) -> str:
        return str(self.inner.url)

    def read(self, key: str) -> Any:
        self.requests += 1
        return self.inner.read(key)

    def write(self, key: str, data: bytes, **kw: Any) -> Any:
        self.requests += 1
        return self.inner.write(key, data, **kw)

    def list(self, prefix: str = "", *, suffix: str = "") -> Any:
        found = self.inner.list(prefix, suffix=suffix)
        self.requests += max(1, -(-len(found) // 1000))
        return found

    def now(self) -> Any:
        self.requests += 1
        return self.inner.now()


def worker(url: str, name: str, work: float, barrier: Any, out: Any) -> None:
    store = Counting(open_store(url))
    m = ShardManager(url, name, store=store, lease_seconds=120)
    barrier.wait()
    store.requests = 0
    done: list[int] = []
    empty_claims = 0
    while True:
        shard = m.claim_shard()
        if shard is None:
            empty_claims += 1
            break
        time.sleep(work)
        m.mark_completed(shard["shard_id"])
        done.append(shard["shard_id"])
    out.put((done, store.requests, empty_claims, time.perf_counter()))


def drain(url: str, processes: int, work: float, shards: int) -> None:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, f"p{i}", work, barrier, out)) for i in range(processes)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    end = max(r[3] for r in results)
    completions = Counter(s for r in results for s in r[0])
    claims = sum(len(r[0]) for r in results)
    requests = sum(r[1] for r in results)
    settle = claims  # one conditional write per completion
    final_polls = sum(r[2] for r in results)
    per_claim = (requests - settle - final_polls * 2) / claims
    duplicates = sum(n - 1 for n in completions.values())
    ideal = shards * work / processes
    print(f"  {len(completions)}/{shards} shards completed, duplicate completions: {duplicates}")
    print(f"  store requests per successful claim: {per_claim:.2f} (excluding the completion write)")
    print(f"  drain time {end - start:.2f} s, ideal {ideal:.2f} s ({(end - start) / ideal:.2f}x)")


def dataset(url: str, shards: int, tmp: Path) -> str:
    src = tmp / f"tasks_{shards}.jsonl"
    src.write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(shards)))
    create_sharded_dataset(str(src), url, num_shards=shards, chunk_size_mb=1, progress=False)
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=32)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--work", type=float, default=0.02)
    parser.add_argument("--status-shards", type=int, default=10000)
    args = parser.parse_args()

    from tests._gcs_server import GCSTestServer
    from tests._proxy import FaultProxy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        server = GCSTestServer(port, Path(tmp) / "gcs")
        server.start()
        os.environ["STORAGE_EMULATOR_HOST"] = server.url
        try:
            from shardclaim.store.gcs import GCSStore, default_client

            client = default_client()
            client.create_bucket("bench")
            for name, url in (
                ("local directory", str(Path(tmp) / "ds")),
                ("GCS test server", "gs://bench/ds"),
            ):
                print(f"\n{name}: {args.processes} processes drain {args.shards} shards, {args.work}s each")
                drain(dataset(url, args.shards, Path(tmp)), args.processes, args.work, args.shards)

            print(f"\nstatus of {args.status_shards} shards on the GCS test server:")
            url = dataset("gs://bench/status", args.status_shards, Path(tmp))
            proxy = FaultProxy(server.url).start()
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            via_proxy = storage.Client(
                project="bench",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": proxy.url},
            )
            m = ShardManager(
                url, "status", store=RetryingStore(GCSStore("bench", "status", client=via_proxy))
            )
            before = len(proxy.requests)
            statuses = m.get_shard_status()
            print(
                f"  {len(statuses)} shards, {len(proxy.requests) - before} HTTP requests "
                "(fake-gcs-server ignores matchGlob, so chunk objects are listed too; real GCS filters them)"
            )
            proxy.stop()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
