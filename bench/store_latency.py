"""Latency of one store operation on each backend, with a naive baseline beside it.

    python bench/store_latency.py [--n 300] [--list-size 100]

For every backend: median and p90 of a conditional write (update at the current generation), a read,
a list of ``--list-size`` objects and ``now()``; and the same write done the naive way (local: write a
file in place; GCS: an unconditional upload through the official client), as a ratio. The GCS figures
are against the GCS test server on loopback (fake-gcs-server, started here), so they measure our
client-side cost plus the emulator, not Google's network. Needs the test extra installed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from shardclaim.store.base import Store
from shardclaim.store.local import LocalStore
from shardclaim.store.memory import MemoryStore


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def stats(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10)
    return f"{statistics.median(samples):8.3f} ms  p90 {q[8]:8.3f} ms"


def bench(name: str, store: Store, naive_write: Callable[[], object] | None, n: int, list_size: int) -> None:
    for i in range(list_size):
        store.write(f"listing/shard_{i:05d}/metadata.json", b"{}", metadata={"status": "available"})
    gen = [store.write("state", b"x" * 600, if_generation_match=0).generation]

    def cas() -> None:
        gen[0] = store.write("state", b"y" * 600, if_generation_match=gen[0]).generation

    rows = {
        "conditional write": timed(cas, n),
        "read": timed(lambda: store.read("state"), n),
        f"list {list_size}": timed(lambda: store.list("listing/", suffix="/metadata.json"), max(n // 3, 10)),
        "now": timed(store.now, n),
    }
    print(f"\n{name}")
    for op, samples in rows.items():
        print(f"  {op:18s} median {stats(samples)}")
    if naive_write is not None:
        base = timed(naive_write, n)
        ratio = statistics.median(rows["conditional write"]) / statistics.median(base)
        print(f"  {'naive write':18s} median {stats(base)}   conditional / naive = {ratio:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--list-size", type=int, default=100)
    args = parser.parse_args()

    bench("memory", MemoryStore(), None, args.n, args.list_size)

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        naive = Path(tmp) / "naive.json"
        bench(
            f"local directory ({tmp}, fsync on)",
            LocalStore(Path(tmp) / "store"),
            lambda: naive.write_bytes(b"y" * 600),
            args.n,
            args.list_size,
        )

    from tests._gcs_server import GCSTestServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = GCSTestServer(port, Path(tmp))
        server.start()
        os.environ["STORAGE_EMULATOR_HOST"] = server.url
        try:
            from shardclaim.store.gcs import GCSStore, default_client

            client = default_client()
            client.create_bucket("bench")
            blob = client.bucket("bench").blob("naive")
            bench(
                "GCS test server (fake-gcs-server 1.54.0 on loopback)",
                GCSStore("bench", "b", client=client),
                lambda: blob.upload_from_string(b"y" * 600),
                args.n,
                args.list_size,
            )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
