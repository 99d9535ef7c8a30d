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
from shardclaim.lease import shard as transitions
from shardclaim.store import Store, StoredObject

__all__ = ["Only", "read_marker", "reset_marker", "reset_shard"]

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
    """Reset the shard at ``key`` (read and checked by ``read``) if it qualifies; whether it was reset."""
    for _ in range(_ROUNDS):
        obj, doc = read()
        if only == "failed" and doc["status"] != "failed":
            return False
        if only == "stale":
            held_for = float((doc.get("lease") or {}).get("lease_seconds", default_lease))
            if doc["status"] != "in_use" or not transitions.lease_expired(obj.updated, store.now(), held_for):
                return False
        data, meta = transitions.encode({**transitions.reset(doc), "write_token": uuid.uuid4().hex})
        try:
            store.write(key, data, if_generation_match=obj.generation, metadata=meta)
        except GenerationMismatchError:
            continue  # it moved on: judge it again
        return True
    msg = f"{key} kept changing under reset; try again"
    raise ShardclaimError(msg)


def read_marker(store: Store) -> dict[str, Any] | None:
    """The fan-in marker as stored (None when no finalizer ever ran)."""
    try:
        obj = store.read(marker.FINALIZE_KEY)
    except ObjectNotFoundError:
        return None
    doc = orjson.loads(obj.data)
    return doc if isinstance(doc, dict) else None


def reset_marker(store: Store) -> bool:
    """Clear the fan-in marker: a failed finalizer runs again, a running one is fenced."""
    for _ in range(_ROUNDS):
        try:
            obj = store.read(marker.FINALIZE_KEY)
        except ObjectNotFoundError:
            return False
        data, meta = marker.encode({"status": "reset", "write_token": uuid.uuid4().hex})
        try:
            store.write(marker.FINALIZE_KEY, data, if_generation_match=obj.generation, metadata=meta)
        except GenerationMismatchError:
            continue
        return True
    msg = "the finalizer marker kept changing under reset; try again"
    raise ShardclaimError(msg)
