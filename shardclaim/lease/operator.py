"""Operator actions: resets that are compare-and-swaps on the very state they judged.

An operator's command races the workers. ``reset --stale`` that picks its targets from a listing and
then writes ``available`` blind would undo a completion that landed in between (a slow holder whose
lease had expired finishing its shard) and have the shard completed twice. Here every reset reads the
document, judges *that* generation, and writes conditioned on it; if the shard moved on meanwhile, it is
judged again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

import orjson

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError, ShardclaimError
from shardclaim.lease import finalizer as marker
from shardclaim.lease import ranges
from shardclaim.lease import shard as transitions
from shardclaim.lease.fenced import write_judged
from shardclaim.store import Store, StoredObject

__all__ = ["Only", "loads_marker", "read_marker", "reset_marker", "reset_shard"]

Only = Literal["stale", "failed"] | None
_ROUNDS = 20


def reset_shard(
    store: Store,
    key: str,
    read: Callable[[], tuple[StoredObject, dict[str, Any]]],
    *,
    only: Only,
    default_lease: float,
) -> bool:
    """Reset the shard at ``key`` (read and checked by ``read``) if it qualifies; whether it was reset.

    The state judged is the first read's status and lease. A refused write (the shard moved on) is
    retried only while that state still holds — a renewed heartbeat, say; if the shard changed state
    meanwhile (its holder completed it), the reset was judged on a state that is gone: not reset.
    """
    judged: object = None
    for _ in range(_ROUNDS):
        obj, doc = read()
        parts = tuple((p.get("status"), (p.get("lease") or {}).get("token")) for p in doc.get("ranges") or [])
        state = (doc["status"], (doc.get("lease") or {}).get("token"), parts)
        if judged is None:
            judged = state
        elif state != judged:
            return False
        if only == "failed" and doc["status"] != "failed":
            return False
        if only == "stale" and ranges.is_split(doc):  # only its parts whose leases expired
            new = ranges.reset_expired(doc, store.now(), default_lease)
            if new is None:
                return False
        elif only == "stale":
            held_for = float((doc.get("lease") or {}).get("lease_seconds", default_lease))
            if doc["status"] != "in_use" or not transitions.lease_expired(obj.updated, store.now(), held_for):
                return False
            new = transitions.reset(doc, store.now())
        else:
            when = store.now() if doc["status"] == "in_use" else None  # the attempt it cuts short ends now
            new = transitions.reset(doc, when)
        if write_judged(store, key, obj.generation, new):
            return True
        # it moved on: judge it again
    msg = f"{key} kept changing under reset; try again"
    raise ShardclaimError(msg)


def read_marker(store: Store) -> dict[str, Any] | None:
    """The fan-in marker as stored (None when no finalizer ever ran)."""
    try:
        obj = store.read(marker.FINALIZE_KEY)
    except ObjectNotFoundError:
        return None
    return loads_marker(obj.data)


def loads_marker(data: bytes) -> dict[str, Any]:
    """A marker's document; a corrupt one reads as ``invalid`` (shown, and replaced by the next run)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return {"status": "invalid", "error": f"{marker.FINALIZE_KEY}: not valid JSON ({e})"}
    if not isinstance(doc, dict):
        return {"status": "invalid", "error": f"{marker.FINALIZE_KEY}: not a JSON object"}
    return doc


def reset_marker(store: Store) -> bool:
    """Clear the fan-in marker: a failed finalizer runs again, a running one is fenced."""
    judged: object = None
    for round_ in range(_ROUNDS):
        try:
            obj = store.read(marker.FINALIZE_KEY)
        except ObjectNotFoundError:
            return False
        status = loads_marker(obj.data).get("status")
        if round_ == 0:
            judged = status
        elif status != judged:
            return False  # it finished (or was taken) after we judged it: judge again from the start
        data, meta = marker.encode({"status": "reset", "write_token": uuid.uuid4().hex})
        try:
            store.write(marker.FINALIZE_KEY, data, if_generation_match=obj.generation, metadata=meta)
        except GenerationMismatchError:
            continue
        return True
    msg = "the finalizer marker kept changing under reset; try again"
    raise ShardclaimError(msg)
