"""The fleet-wide halt: once ``max_failed_shards`` shards are ``failed``, nothing new starts anywhere.

The halt is one object, ``_halt/metadata.json``, named so that the one listing every claim already makes
(of ``*/metadata.json``) sees it: workers respect it without an extra request. A worker whose listing
counts at least its ``max_failed_shards`` failed shards creates it (only if absent: one creator wins);
from then on every claim on every machine finds nothing to claim, running shards finish, the worker
loops end, ``run`` exits 1 and the finalizer does not run. ``shardclaim reset DATASET --failed`` lifts it.
The object's metadata caches its status like a shard's; where the cache is missing, it is read.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError, ShardclaimError
from shardclaim.store import ABSENT, Generation, ObjectInfo, Store

__all__ = ["HALT_KEY", "describe", "halted", "lift", "trip"]

HALT_KEY = "_halt/metadata.json"


def halted(store: Store, info: ObjectInfo | None) -> dict[str, Any] | None:
    """The halt, from its listing entry (None: not halted). Reads the object only if its cache is gone."""
    if info is None:
        return None
    status = info.metadata.get("status")
    if status == "halted":
        try:
            return {"status": "halted", "failed": int(info.metadata.get("failed", "0") or 0),
                    "limit": int(info.metadata.get("limit", "0") or 0)}  # fmt: skip
        except ValueError:
            pass  # a garbled cache: the object says (as where the cache is gone)
    elif status is not None:
        return None
    try:
        doc = _load(store.read(HALT_KEY).data)
    except ObjectNotFoundError:
        return None
    return doc if doc.get("status") == "halted" else None


def describe(halt: Mapping[str, Any], dataset: str) -> str:
    """The halt in one line: why, and how to lift it."""
    return (
        f"HALTED: {halt.get('failed', '?')} shards failed (limit {halt.get('limit', '?')}): nothing new "
        f"starts on any worker; shardclaim reset {dataset} --failed lifts it"
    )


def trip(store: Store, failed: list[int], limit: int, worker: str) -> None:
    """Halt the job (if nobody has yet): ``failed`` shards reached ``limit``."""
    doc = {"status": "halted", "failed_shards": failed, "failed": len(failed), "limit": limit, "by": worker,
           "write_token": uuid.uuid4().hex}  # fmt: skip
    generation: Generation = ABSENT
    try:
        current = store.read(HALT_KEY)
    except ObjectNotFoundError:
        pass
    else:
        if _load(current.data).get("status") == "halted":
            return
        generation = current.generation  # lifted before: halt again
    try:
        store.write(HALT_KEY, orjson.dumps(doc), if_generation_match=generation, metadata=_meta(doc))
    except GenerationMismatchError:
        return  # someone else halted it (or lifted it) just now


def lift(store: Store) -> bool:
    """Lift the halt (an operator reset the failed shards). Whether there was one."""
    for _ in range(20):
        try:
            current = store.read(HALT_KEY)
        except ObjectNotFoundError:
            return False
        if _load(current.data).get("status") != "halted":
            return False
        doc = {"status": "lifted", "write_token": uuid.uuid4().hex}
        try:
            store.write(
                HALT_KEY, orjson.dumps(doc), if_generation_match=current.generation, metadata=_meta(doc)
            )
        except GenerationMismatchError:
            continue
        return True
    msg = "the halt kept changing under reset; try again"
    raise ShardclaimError(msg)


def _load(data: bytes) -> dict[str, Any]:
    """The halt object's document; a corrupt one reads as no halt (and is replaced by the next one)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _meta(doc: Mapping[str, Any]) -> dict[str, str]:
    meta = {"status": str(doc["status"])}
    if doc["status"] == "halted":
        meta.update(failed=str(doc["failed"]), limit=str(doc["limit"]))
    return meta
