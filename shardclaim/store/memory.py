"""An in-process store for fast unit tests.

Atomic within one process (a lock around a dict); it is never evidence about other processes or
machines. The clock is injectable, so tests move time instead of sleeping.

``versions="etag"`` makes it version objects the way S3 does: a generation is the hex MD5 of the bytes,
a string with no order, and two writes of identical bytes get identical versions (the ABA an S3 store
must defeat by making every write's bytes unique). The protocol's tests run on both kinds.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError
from shardclaim.store.base import (
    Generation,
    ObjectInfo,
    StoredObject,
    content_md5,
    refuse_identical_rewrite,
    validate_key,
    validate_metadata,
)

__all__ = ["MemoryStore", "named_memory_store"]


class MemoryStore:
    """A dict of objects with compare-and-swap writes, guarded by one lock."""

    def __init__(
        self,
        name: str = "",
        *,
        clock: Callable[[], float] = time.time,
        versions: Literal["ordered", "etag"] = "ordered",
    ) -> None:
        if versions not in ("ordered", "etag"):
            raise ValueError(f"versions must be 'ordered' or 'etag', not {versions!r}")
        self._etag = versions == "etag"
        self._name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[str, StoredObject] = {}
        self._last_generation = 0

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def read(self, key: str) -> StoredObject:
        validate_key(key)
        with self._lock:
            try:
                obj = self._objects[key]
            except KeyError:
                raise ObjectNotFoundError(key) from None
        return dataclasses.replace(obj, read_at=self.now())

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        meta = validate_metadata(metadata)
        md5 = content_md5(data) if self._etag else ""
        if self._etag:
            refuse_identical_rewrite(key, md5, if_generation_match)
        with self._lock:
            current = self._objects.get(key)
            if if_generation_match is not None:
                have = 0 if current is None else current.generation
                if have != if_generation_match:
                    raise GenerationMismatchError(key, if_generation_match)
            # Generations come from one counter, so they also increase across re-creation.
            self._last_generation += 1
            version: Generation = self._last_generation
            if self._etag:
                version = md5
            obj = StoredObject(key, bytes(data), version, self.now(), meta)
            self._objects[key] = obj
        return ObjectInfo(key, obj.generation, obj.updated, len(obj.data), meta)

    def delete(self, key: str) -> None:
        """Remove an object if present (test helper; not part of the Store contract)."""
        with self._lock:
            self._objects.pop(key, None)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        with self._lock:
            found = [o for k, o in self._objects.items() if k.startswith(prefix) and k.endswith(suffix)]
        found.sort(key=lambda o: o.key)
        return [ObjectInfo(o.key, o.generation, o.updated, len(o.data), o.metadata) for o in found]

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)


_named: dict[str, MemoryStore] = {}
_named_lock = threading.Lock()


def named_memory_store(name: str) -> MemoryStore:
    """The process-wide store behind ``memory://name`` (like fsspec's memory filesystem)."""
    with _named_lock:
        if name not in _named:
            _named[name] = MemoryStore(name)
        return _named[name]
