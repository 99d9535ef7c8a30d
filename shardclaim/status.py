"""The aggregate view of a dataset's shards."""

from __future__ import annotations

from typing import Any

__all__ = ["summarize"]


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
