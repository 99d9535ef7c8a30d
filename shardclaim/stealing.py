"""Straggler stealing, the part of :class:`~shardclaim.manager.ShardManager` that claims *parts* of
shards: the untouched tail of a running shard (:meth:`Stealing.steal`), a part of a split shard that is
free again (released, or its holder's lease expired), and the holder's side — reserving the next chunks
before starting them, so that a split never takes work in progress (:meth:`Stealing.reserve`).

The protocol is :mod:`shardclaim.lease.ranges`; here are its reads and conditional writes. Only callers
that handle parts take them (``claim_shard(parts=True)``, ``claims(steal=True)``, ``run --per-chunk``):
a part's claim names its chunks as ``range`` = ``[start, end)``, which code written for whole shards
would ignore.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

from shardclaim.errors import LeaseLostError, MetadataError, ObjectNotFoundError
from shardclaim.lease import ranges
from shardclaim.lease import shard as transitions
from shardclaim.lease.fenced import FencedLease, write_judged
from shardclaim.lease.holdings import Holdings
from shardclaim.lease.views import ClaimedShard, ShardView, describe
from shardclaim.store import Generation, Store, StoredObject

__all__ = ["Stealing", "describe_part"]

log = logging.getLogger("shardclaim.manager")

#: Running shards a steal tries, most untouched work first, before it gives up for now.
_VICTIMS = 3


def describe_part(doc: Mapping[str, Any], token: str, base_url: str, dataset_dir: str) -> ClaimedShard:
    """A claim as :meth:`claim_shard` returns it; for a part of a split shard, the part's own fields
    (status, holder, lease, attempt, ``resume_chunk``) and ``range`` = ``[start, end)``. ``chunks`` keep
    the shard's numbering (chunk ``i`` is ``chunks[i]``)."""
    out = describe(doc, base_url, dataset_dir)
    i = ranges.part_of(doc, token)
    if i is None:
        return out
    part = doc["ranges"][i]
    fields = ("status", "assigned_to", "lease", "attempt", "started_at", "failures", "last_error")
    merged: dict[str, Any] = {**out, **{k: part.get(k) for k in fields}}
    merged["resume_chunk"] = int(part.get("resume_chunk") or part["start"])
    merged["range"] = [int(part["start"]), int(part["end"])]
    return cast(ClaimedShard, merged)


class Stealing:
    """Mixed into ShardManager, which provides the attributes declared here."""

    _store: Store
    _holdings: Holdings
    _adoptable: bool
    lease_seconds: float
    max_expiries: int
    worker_id: str
    dataset_dir: str
    _dirs: list[str]
    _key: Callable[[int], str]
    _new_lease: Callable[..., FencedLease]
    _lease_for: Callable[[int], FencedLease]
    _checked: Callable[[str, bytes, int], dict[str, Any]]
    shard_views: Callable[[], list[ShardView]]

    def steal(self, views: list[ShardView] | None = None) -> ClaimedShard | None:
        """Take the untouched second half of the running shard with the most untouched chunks (its
        holder reserves the chunks it works on; a split never takes them); None when no running shard
        has any. Its holder learns of it at its next chunk boundary and stops there."""
        held = set(self._holdings.held())
        listed = views if views is not None else self.shard_views()
        victims = sorted(
            (v for v in listed if v.steal > 0 and v.shard_id not in held), key=lambda v: -v.steal
        )
        for view in victims[:_VICTIMS]:
            try:
                obj = self._store.read(self._key(view.shard_id))
                doc = self._checked(obj.key, obj.data, view.shard_id)
            except (ObjectNotFoundError, MetadataError):
                continue
            token, when = uuid.uuid4().hex, obj.read_at or obj.updated
            cut = ranges.split(
                doc, num_chunks=len(doc["chunks"]), updated=obj.updated, taker=self._taker(token, when, None)
            )
            if cut is None:
                continue
            claimed = self._take(view.shard_id, obj.generation, cut[0], token)
            if claimed is not None:
                log.info("took chunks %s of shard %d from its holder", claimed.get("range"), view.shard_id)
                return claimed
        return None

    def _claim_part(
        self, shard_id: int, obj: StoredObject, doc: dict[str, Any], now: datetime | None
    ) -> ClaimedShard | None:
        """A free part of a split shard: an available one, else one whose lease expired (or, if its
        holders kept dying without progress, that part failed instead)."""
        if shard_id in self._holdings.held():  # one lease per shard and manager: not a second part
            return None
        now = now or self._store.now()
        i = ranges.claimable_part(doc, now, self.lease_seconds)
        if i is None:
            return None
        parts = list(doc["ranges"])
        part = parts[i]
        expired = part.get("status") == "in_use"
        if expired and (poisoned := transitions.poisoned(part, self.max_expiries, now)) is not None:
            parts[i] = poisoned
            new = ranges.summarized({**doc, "ranges": parts}, when=now)
            if write_judged(self._store, obj.key, obj.generation, new):
                log.warning("shard %d, chunks %d-%d failed: %s", shard_id, part["start"], part["end"] - 1,
                            poisoned["last_error"])  # fmt: skip
            return None
        token = uuid.uuid4().hex
        parts[i] = self._taker(token, now, part.get("assigned_to") if expired else None)(part)
        return self._take(
            shard_id, obj.generation, ranges.summarized({**doc, "ranges": parts}, when=now), token
        )

    def _taker(
        self, token: str, when: datetime, reclaimed_from: str | None
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def take(part: dict[str, Any]) -> dict[str, Any]:
            new = transitions.claimed(
                part, worker=self.worker_id, token=token, lease_seconds=self.lease_seconds, started_at=when,
                reclaimed_from=reclaimed_from, adoptable=self._adoptable,
            )  # fmt: skip
            return {**new, "renewed_at": when.isoformat()}

        return take

    def _take(
        self, shard_id: int, generation: Generation, doc: dict[str, Any], token: str
    ) -> ClaimedShard | None:
        lease = self._new_lease(shard_id, generation, doc, token)
        try:
            doc = lease.write(lambda d: d, kind="claim")  # conditioned on the generation read
        except LeaseLostError:
            return None  # a peer got there first
        self._holdings.add(shard_id, lease)
        base = f"{self._store.url.rstrip('/')}/{self._dirs[shard_id]}"
        return describe_part(doc, token, base, self.dataset_dir)

    def reserve(self, shard_id: int, cursor: int, count: int = 1, *, done: bool = False) -> tuple[int, int]:
        """The holder's write at a chunk boundary: the next ``count`` chunks from ``cursor`` are reserved
        for it — never taken by a split. ``done``: the chunks before ``cursor`` are also checkpointed (a
        later holder resumes after them; say so only when their results are durable). Returns
        ``(reserved, end)``: work on chunks below ``reserved``; when it equals ``cursor``, the part
        (or the shard) has no chunk left for this holder (a split took the rest). LeaseLostError as any
        fenced write."""
        lease = self._lease_for(shard_id)
        num_chunks = len(lease.doc.get("chunks") or [])

        def change(part: dict[str, Any]) -> dict[str, Any]:
            return ranges.reserved(part, cursor, count, num_chunks, done=done)

        doc = lease.write(change, kind="checkpoint")
        part = doc
        if lease.token is not None and (i := ranges.part_of(doc, lease.token)) is not None:
            part = doc["ranges"][i]
        return int(part["reserved_chunk"]), transitions.end_of(part, num_chunks)
