"""The aggregate view of a dataset's shards: one entry per shard, and the job's state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from shardclaim.lease.views import ShardView, ViewStatus

__all__ = ["SETTLED_STATES", "ShardStatusEntry", "shard_statuses", "summarize"]

#: Aggregate states in which no shard can change without an operator: the job is over.
SETTLED_STATES = frozenset({"succeeded", "failed", "halted"})


class ShardStatusEntry(TypedDict):
    """One entry of :meth:`~shardclaim.manager.ShardManager.get_shard_status`. ``status`` is a shard
    status, or ``invalid`` (its metadata was refused: ``error`` says why) or ``missing``."""

    shard_id: int
    total_tasks: int | None
    status: ViewStatus
    assigned_to: NotRequired[str | None]
    attempt: NotRequired[int]
    failures: NotRequired[int]
    heartbeat_age_s: NotRequired[float | None]
    lease_seconds: NotRequired[float | None]
    expired: NotRequired[bool]
    error: NotRequired[str]
    compute_s: NotRequired[float]
    records_done: NotRequired[int]  #: all of them once completed; before, those of checkpointed chunks
    parts: NotRequired[int]  #: a split shard: how many parts (lease.ranges); absent when whole


def shard_statuses(
    master: dict[str, Any], views: Sequence[ShardView], now: datetime
) -> list[ShardStatusEntry]:
    """One entry per shard from its view (no per-shard reads)."""
    out = []
    for view, entry in zip(views, master["shards"], strict=True):
        status: ShardStatusEntry = {
            "shard_id": view.shard_id,
            "total_tasks": entry.get("total_tasks"),
            "status": view.status,
        }
        if view.status in ("missing", "invalid"):
            if view.error:
                status["error"] = view.error
            out.append(status)
            continue
        age = max(0.0, (now - view.updated).total_seconds()) if view.updated is not None else 0.0
        status["assigned_to"] = view.holder
        status["attempt"] = view.attempt
        status["failures"] = view.failures
        status["heartbeat_age_s"] = round(age, 1) if view.status == "in_use" else None
        status["lease_seconds"] = view.lease_seconds
        status["expired"] = view.expired(now)
        status["compute_s"] = round(view.compute_seconds, 3)
        done = (entry.get("total_tasks") or 0) if view.status == "completed" else view.records_done
        status["records_done"] = int(done)
        if view.parts:
            status["parts"] = view.parts
        out.append(status)
    return out


def summarize(statuses: Sequence[Mapping[str, Any]], *, halted: bool = False) -> dict[str, Any]:
    """Aggregate: ``halted`` (the job was halted and nothing runs any more), ``succeeded`` (all completed),
    ``failed`` (all settled, some failed or invalid),
    ``running`` (someone holds a lease) or ``partial`` (work left and nobody on it); counts; records done
    (of completed shards, and of the checkpointed chunks of the others)."""
    counts: dict[str, int] = {}
    for s in statuses:
        key = "expired" if s.get("expired") else s["status"]
        counts[key] = counts.get(key, 0) + 1
    total = len(statuses)
    settled = counts.get("completed", 0) + counts.get("failed", 0) + counts.get("invalid", 0)
    if halted and not counts.get("in_use", 0):
        state = "halted"  # the fleet-wide halt, and nothing still running
    elif counts.get("completed", 0) == total:
        state = "succeeded"
    elif settled == total:
        state = "failed"
    elif counts.get("in_use", 0):
        state = "running"
    else:
        state = "partial"
    done = sum(
        (s.get("total_tasks") or 0) if s["status"] == "completed" else (s.get("records_done") or 0)
        for s in statuses
    )
    compute = round(sum(float(s.get("compute_s") or 0) for s in statuses), 1)
    return {
        "state": state,
        "shards": total,
        "counts": counts,
        "records_done": done,
        "compute_seconds": compute,
    }
