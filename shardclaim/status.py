"""The aggregate view of a dataset's shards."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from shardclaim.store import ObjectInfo, Store

__all__ = ["lease_expired", "lease_of", "listing_by_shard", "shard_statuses", "summarize"]


def listing_by_shard(store: Store, directories: list[str]) -> dict[int, ObjectInfo]:
    """One listing of every shard's ``metadata.json``, keyed by shard id."""
    by_dir = {d: i for i, d in enumerate(directories)}
    found = {}
    for info in store.list(suffix="/metadata.json"):
        directory, _, name = info.key.partition("/")
        if name == "metadata.json" and directory in by_dir:
            found[by_dir[directory]] = info
    return found


def lease_of(metadata: Mapping[str, str], default: float) -> float:
    """The lease length its holder took, as recorded in the object's metadata."""
    try:
        value = float(metadata["lease-seconds"])
    except (KeyError, ValueError):
        return default
    return value if value > 0 else default


def lease_expired(updated: datetime, now: datetime, lease_seconds: float) -> bool:
    """Expired on the store's clock: the last write is more than the lease length before ``now``."""
    return now - updated > timedelta(seconds=lease_seconds)


def shard_statuses(
    master: dict[str, Any], listing: dict[int, ObjectInfo], now: datetime, lease_seconds: float
) -> list[dict[str, Any]]:
    """One entry per shard, from the custom metadata a listing returned (no per-shard reads)."""
    out = []
    for shard_id, entry in enumerate(master["shards"]):
        base: dict[str, Any] = {"shard_id": shard_id, "total_tasks": entry.get("total_tasks")}
        info = listing.get(shard_id)
        if info is None:
            out.append({**base, "status": "missing"})
            continue
        meta = info.metadata
        status = meta.get("status", "available")
        age = max(0.0, (now - info.updated).total_seconds())
        out.append(
            {
                **base,
                "status": status,
                "assigned_to": meta.get("holder"),
                "attempt": int(meta.get("attempt", 0)),
                "failures": int(meta.get("failures", 0)),
                "heartbeat_age_s": round(age, 1) if status == "in_use" else None,
                "expired": status == "in_use"
                and lease_expired(info.updated, now, lease_of(meta, lease_seconds)),
            }
        )
    return out


def summarize(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate: ``succeeded`` (all completed), ``failed`` (all settled, some failed), ``running``
    (someone holds a live lease) or ``partial`` (work left and nobody on it); counts; records done."""
    counts: dict[str, int] = {}
    for s in statuses:
        key = "expired" if s.get("expired") else s["status"]
        counts[key] = counts.get(key, 0) + 1
    total = len(statuses)
    if counts.get("completed", 0) == total:
        state = "succeeded"
    elif counts.get("completed", 0) + counts.get("failed", 0) == total:
        state = "failed"
    elif counts.get("in_use", 0):
        state = "running"
    else:
        state = "partial"
    done = sum(s.get("total_tasks") or 0 for s in statuses if s["status"] == "completed")
    return {"state": state, "shards": total, "counts": counts, "records_done": done}
