"""Fakes for tests and benchmarks of code built on shardclaim (and for shardclaim's own tests).

* :class:`FakeClock` — a settable clock for :class:`~shardclaim.store.memory.MemoryStore` and for
  anything that takes ``clock=``/``sleep=``: time moves only when the test moves it.
* :func:`memory_dataset` — a dataset of N shards written straight into a memory store (no chunk data),
  for protocol tests that never read records.
* :func:`build_dataset` — a real dataset (chunk files and all) from generated records, through the
  builder, at any store URL.
* :class:`HookStore` — wraps any store: counts requests by operation, runs a hook before chosen
  requests (to interleave another actor at the worst moment), and raises injected faults.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from shardclaim.errors import TransientStoreError
from shardclaim.layout import FORMAT_VERSION, MASTER_KEY, SHARD_METADATA, chunk_name, shard_dir
from shardclaim.store.base import Generation, ObjectInfo, Store, StoredObject
from shardclaim.store.memory import MemoryStore

__all__ = [
    "LOSE_RESPONSE",
    "FakeClock",
    "HookStore",
    "build_dataset",
    "memory_dataset",
    "process_gone",
    "wait_for",
]


class FakeClock:
    """Seconds since the epoch that move only by :meth:`advance` (or assignment to ``now``).

    ``sleep`` advances the clock instead of waiting, so a loop that sleeps runs at once.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def memory_dataset(
    num_shards: int,
    *,
    chunks_per_shard: int = 1,
    tasks_per_chunk: int = 10,
    clock: Callable[[], float] | None = None,
    name: str = "sim",
    versions: Literal["ordered", "etag"] = "ordered",
) -> MemoryStore:
    """A memory store holding a complete dataset's metadata (master last, as the builder writes it);
    ``versions="etag"`` versions objects as S3 does (:class:`~shardclaim.store.memory.MemoryStore`)."""
    store = MemoryStore(name, clock=clock or time.time, versions=versions)
    shards: list[dict[str, Any]] = []
    for shard_id in range(num_shards):
        directory = shard_dir(shard_id, num_shards)
        chunks = [
            {"chunk_id": c, "file": chunk_name(c), "num_tasks": tasks_per_chunk, "size_mb": 0.001}
            for c in range(chunks_per_shard)
        ]
        total = tasks_per_chunk * chunks_per_shard
        doc = {
            "shard_id": shard_id,
            "total_shards": num_shards,
            "status": "available",
            "total_tasks": total,
            "num_chunks": chunks_per_shard,
            "chunks": chunks,
            "assigned_to": None,
            "started_at": None,
            "completed_at": None,
        }
        store.write(f"{directory}/{SHARD_METADATA}", orjson.dumps(doc), metadata={"status": "available"})
        shards.append({"shard_id": shard_id, "directory": directory, "total_tasks": total})
    master = {
        "format_version": FORMAT_VERSION,
        "total_tasks": sum(s["total_tasks"] for s in shards),
        "num_shards": num_shards,
        "chunk_size_mb": 0.001,
        "shards": shards,
    }
    store.write(MASTER_KEY, orjson.dumps(master))
    return store


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    """Poll ``predicate`` until it is true, failing with ``what`` after ``timeout`` seconds.

    Only for what runs on real time — other processes on a real store — where no clock can be injected.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.02)


def process_gone(pid: int, *, group: bool = False) -> bool:
    """Whether the process ``pid`` (with ``group``, its whole process group) no longer exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return True
    return False


def build_dataset(url: str, tmp_path: Path, *, shards: int = 8, records: int = 80, **options: Any) -> str:
    """Build a real dataset at ``url`` from ``records`` generated records ``{"id": i, ...}``."""
    from shardclaim.dataset import create_sharded_dataset

    src = tmp_path / f"records-{records}.jsonl"
    if not src.exists():
        src.write_bytes(
            b"".join(orjson.dumps({"id": i, "text": "x" * (i % 50)}) + b"\n" for i in range(records))
        )
    options.setdefault("chunk_size_mb", 0.001)
    create_sharded_dataset(str(src), url, num_shards=shards, **options)
    return url


def _lose_response() -> None:
    """Marker action: forward the request, then fail as if its answer was lost."""


#: ``store.before("write", LOSE_RESPONSE, key=...)``: the write lands, the caller gets a transient error.
LOSE_RESPONSE = _lose_response


@dataclass
class _Hook:
    operation: str
    key_contains: str
    action: Callable[[], None] | BaseException
    remaining: int


class HookStore:
    """A store that forwards to ``inner`` and lets a test act between requests.

    ``before("write", fn, key="shard_003")`` runs ``fn()`` just before the next matching request is
    forwarded (in the requesting thread); ``before("write", OSError(28, "No space"))`` raises instead.
    ``count`` tallies every request by operation.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.count: Counter[str] = Counter()
        self._hooks: list[_Hook] = []
        self._lock = threading.Lock()

    def before(
        self, operation: str, action: Callable[[], None] | BaseException, *, key: str = "", times: int = 1
    ) -> None:
        with self._lock:
            self._hooks.append(_Hook(operation, key, action, times))

    def _lose_next(self, operation: str, key: str) -> bool:
        with self._lock:
            return any(
                h.action is LOSE_RESPONSE and h.operation == operation and h.key_contains in key
                for h in self._hooks
            )

    def _fire(self, operation: str, key: str) -> None:
        with self._lock:
            self.count[operation] += 1
            hook = next((h for h in self._hooks if h.operation == operation and h.key_contains in key), None)
            if hook is not None:
                hook.remaining -= 1
                if hook.remaining <= 0:
                    self._hooks.remove(hook)
        if hook is None:
            return
        if isinstance(hook.action, BaseException):
            raise hook.action
        if hook.action is LOSE_RESPONSE:
            return
        hook.action()

    @property
    def url(self) -> str:
        return self.inner.url

    def read(self, key: str) -> StoredObject:
        self._fire("read", key)
        return self.inner.read(key)

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        lose = self._lose_next("write", key)
        self._fire("write", key)
        info = self.inner.write(key, data, if_generation_match=if_generation_match, metadata=metadata)
        if lose:
            raise TransientStoreError("write", f"{key!r}: response lost (injected)")
        return info

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        self._fire("list", prefix + "*" + suffix)
        return self.inner.list(prefix, suffix=suffix)

    def now(self) -> datetime:
        self._fire("now", "")
        return self.inner.now()
