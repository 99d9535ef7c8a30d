"""What one listing says about every shard, and which shards a claim should try.

Each state write caches the document's ``status``, ``holder``, ``attempt``, ``failures`` and lease length
in the object's metadata, so a listing shows every shard without reading any. The document is the
truth, the metadata only a cache of it: where the cache is missing (a copy made with ``cp -r`` drops
extended attributes) or garbled (hand edits, hostile values), the document is read; a document that
fails its checks makes the shard ``invalid`` — shown with the reason, never claimed, never in the way of
the other shards.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict, cast

from shardclaim.errors import ObjectNotFoundError
from shardclaim.layout import (
    MAX_LEASE_SECONDS,
    SHARD_METADATA,
    STATUSES,
    MetadataError,
    check_shard,
    parse_json,
)
from shardclaim.lease.halt import HALT_KEY, halted
from shardclaim.lease.shard import encode, lease_expired
from shardclaim.locations import chunk_locations
from shardclaim.store import Generation, ObjectInfo, Store

__all__ = [
    "ClaimedShard",
    "InvalidShards",
    "ShardView",
    "ViewStatus",
    "describe",
    "read_listing",
    "read_views",
]

ViewStatus = Literal["available", "in_use", "completed", "failed", "invalid", "missing"]


@dataclass(frozen=True, slots=True)
class ShardView:
    """One shard as a listing (or, where needed, its document) shows it."""

    shard_id: int
    status: ViewStatus
    holder: str | None = None
    attempt: int = 0
    failures: int = 0
    lease_seconds: float | None = None  #: the holder's own lease length, for in_use shards
    updated: datetime | None = None  #: the last write, on the store's clock
    generation: Generation = 0
    error: str | None = None  #: why the shard is invalid
    compute_seconds: float = 0.0  #: the durations of its ended attempts, summed
    records_done: int = 0  #: records of checkpointed chunks (a shard not completed)
    steal: int = 0  #: untouched chunks of its holders that an idle worker may take (lease.ranges)
    parts: int = 0  #: the parts of a split shard (0: whole)
    renewed: datetime | None = None  #: a split shard: the oldest renewal of a part in use
    open_part: bool = False  #: a split shard with a part to claim (released, failed with attempts left)

    def expired(self, now: datetime) -> bool:
        """Whether a lease on it expired (a split shard: the lease of one of its parts)."""
        if self.status != "in_use" or self.lease_seconds is None:
            return False
        when = self.renewed if self.parts else self.updated
        return when is None or lease_expired(when, now, self.lease_seconds)


def read_views(store: Store, directories: list[str], default_lease: float) -> list[ShardView]:
    """Every shard's view from one listing (plus one read per shard whose cache cannot be used)."""
    return read_listing(store, directories, default_lease)[0]


def read_listing(
    store: Store, directories: list[str], default_lease: float
) -> tuple[list[ShardView], dict[str, Any] | None]:
    """One listing: every shard's view, and the fleet-wide halt if the job is halted."""
    by_dir = {d: i for i, d in enumerate(directories)}
    listed: dict[int, ObjectInfo] = {}
    halt_info = None
    for info in store.list(suffix=f"/{SHARD_METADATA}"):
        directory, _, name = info.key.partition("/")
        if name == SHARD_METADATA and directory in by_dir:
            listed[by_dir[directory]] = info
        elif info.key == HALT_KEY:
            halt_info = info
    views = []
    for shard_id, directory in enumerate(directories):
        found = listed.get(shard_id)
        if found is None:
            views.append(ShardView(shard_id, "missing"))
            continue
        view = _from_cache(shard_id, found, default_lease)
        views.append(view if view is not None else read_view(store, shard_id, directory, default_lease))
    return views, halted(store, halt_info)


def read_view(store: Store, shard_id: int, directory: str, default_lease: float) -> ShardView:
    """One shard's view from its document (one read)."""
    key = f"{directory}/{SHARD_METADATA}"
    try:
        obj = store.read(key)
    except ObjectNotFoundError:
        return ShardView(shard_id, "missing")
    try:
        doc = check_shard(key, parse_json(key, obj.data), expect_id=shard_id)
    except MetadataError as e:
        return ShardView(shard_id, "invalid", updated=obj.updated, generation=obj.generation, error=str(e))
    # The view a listing would give of it: the same cache, computed from the document itself.
    cached = ObjectInfo(key, obj.generation, obj.updated, len(obj.data), encode(doc)[1])
    view = _from_cache(shard_id, cached, default_lease)
    if view is None:  # the document passed its checks, so its own cache is sound; defensive only
        return ShardView(
            shard_id, "invalid", updated=obj.updated, generation=obj.generation, error="unreadable"
        )
    return view


def _from_cache(shard_id: int, info: ObjectInfo, default_lease: float) -> ShardView | None:
    """The view the cached metadata gives, or None when the document must be read instead."""
    meta = info.metadata
    status = meta.get("status")
    if status not in STATUSES:
        return None
    try:
        attempt = int(meta.get("attempt", "0"))
        failures = int(meta.get("failures", "0"))
        lease = float(meta["lease-seconds"]) if "lease-seconds" in meta else default_lease
        compute = float(meta.get("compute-s", "0"))
        records = int(meta.get("records-done", "0"))
        steal, parts = int(meta.get("steal", "0")), int(meta.get("parts", "0"))
        renewed = datetime.fromisoformat(meta["renewed-min"]) if "renewed-min" in meta else None
    except ValueError:
        return None
    if not 0 <= compute < math.inf or records < 0 or (renewed is not None and renewed.tzinfo is None):
        return None
    if attempt < 0 or failures < 0 or not (0 < lease <= MAX_LEASE_SECONDS) or math.isnan(lease):
        return None
    if status == "in_use" and ("holder" not in meta or (parts and renewed is None)):
        return None
    return ShardView(
        shard_id,
        status,  # type: ignore[arg-type]
        holder=meta.get("holder"),
        attempt=attempt,
        failures=failures,
        lease_seconds=lease if status == "in_use" else None,
        updated=info.updated,
        generation=info.generation,
        compute_seconds=compute,
        records_done=records if status != "completed" else 0,
        steal=max(0, steal),
        parts=max(0, parts),
        renewed=renewed,
        open_part=meta.get("open") == "1",
    )


class ClaimedShard(TypedDict):
    """What :meth:`~shardclaim.manager.ShardManager.claim_shard` returns: the shard's document, with
    ``chunks`` as readable paths/URLs (the seed's keys), the chunk entries as ``chunk_info``."""

    shard_id: int
    total_shards: int
    status: str
    total_tasks: int
    num_chunks: int
    chunks: list[str]
    chunk_info: list[dict[str, Any]]
    assigned_to: str | None
    started_at: str | None
    completed_at: str | None
    attempt: int
    lease: dict[str, Any] | None
    dataset_dir: str
    resume_chunk: NotRequired[int]
    failures: NotRequired[int]
    heartbeats: NotRequired[int]
    expired_leases: NotRequired[int]
    reclaimed_from: NotRequired[str | None]
    last_error: NotRequired[str | None]
    write_token: NotRequired[str]
    range: NotRequired[list[int]]  #: a part of a split shard: its chunks [start, end)


def describe(doc: Mapping[str, Any], base_url: str, dataset_dir: str) -> ClaimedShard:
    """A claimed shard as the seed's API returns it: its document, with ``chunks`` as readable URLs
    under ``base_url`` (the shard's directory) and the chunk entries as ``chunk_info``."""
    out = {k: v for k, v in doc.items() if k != "chunks"}
    out["chunks"] = chunk_locations(dict(doc), base_url)  # chunk files, task files, or source ranges
    out["chunk_info"] = list(doc["chunks"])
    out["dataset_dir"] = dataset_dir
    return cast(ClaimedShard, out)


class InvalidShards:
    """Shards one worker found unusable (their document failed its checks), each at the generation it
    was found so: overlaid on listings as ``invalid`` until someone rewrites the shard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[int, tuple[Generation, str]] = {}

    def note(self, shard_id: int, generation: Generation, error: str) -> bool:
        """Remember it; whether it is news (worth a warning)."""
        with self._lock:
            news = self._found.get(shard_id, (None, None))[0] != generation
            self._found[shard_id] = (generation, error)
        return news

    def overlay(self, views: list[ShardView]) -> list[ShardView]:
        with self._lock:
            found = dict(self._found)
        return [
            ShardView(
                v.shard_id, "invalid", updated=v.updated, generation=v.generation, error=found[v.shard_id][1]
            )
            if v.shard_id in found and found[v.shard_id][0] == v.generation and v.status != "invalid"
            else v
            for v in views
        ]
