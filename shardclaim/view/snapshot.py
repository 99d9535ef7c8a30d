"""One look at a job: one listing of the shards (their state cached in each object's metadata) and one
read of the store's clock. Nothing here reads a shard's document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from shardclaim.status import SETTLED_STATES, ShardStatusEntry, shard_statuses, summarize

if TYPE_CHECKING:
    from shardclaim.lease.views import ShardView
    from shardclaim.manager import ShardManager

__all__ = ["SHOWN_STATES", "Shown", "Snapshot", "ids_by_state", "shown_state", "take"]

#: What a shard is shown as: its status, with an ``in_use`` shard whose lease expired told apart.
Shown = Literal["completed", "in_use", "expired", "available", "failed", "invalid", "missing"]
#: In the order the view lists them (most final first).
SHOWN_STATES: tuple[Shown, ...] = (
    "completed",
    "in_use",
    "expired",
    "available",
    "failed",
    "invalid",
    "missing",
)


def shown_state(entry: Mapping[str, Any]) -> Shown:
    if entry.get("expired"):
        return "expired"
    state: Shown = entry["status"]
    return state


def ids_by_state(statuses: Sequence[Mapping[str, Any]]) -> dict[Shown, list[int]]:
    """The shard ids in each shown state (states with no shard left out), ids ascending."""
    out: dict[Shown, list[int]] = {}
    for entry in statuses:
        out.setdefault(shown_state(entry), []).append(int(entry["shard_id"]))
    return {state: sorted(out[state]) for state in SHOWN_STATES if state in out}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The job as one listing showed it, at ``at`` on the store's clock."""

    dataset: str
    at: datetime
    views: list[ShardView]
    statuses: list[ShardStatusEntry]
    halt: dict[str, Any] | None
    summary: dict[str, Any]
    records_total: int
    chunks_total: int | None  #: None when the master does not record chunk counts (old datasets)
    chunks_done: int | None  #: the chunks of completed shards

    @property
    def settled(self) -> bool:
        """No shard can change without an operator: all completed or failed, or the job halted."""
        return self.summary["state"] in SETTLED_STATES

    @property
    def ids(self) -> dict[Shown, list[int]]:
        return ids_by_state(self.statuses)

    @property
    def shards_done(self) -> int:
        return int(self.summary["counts"].get("completed", 0))


def take(manager: ShardManager) -> Snapshot:
    """Look once: one listing (on GCS one request per 1,000 shards) and one read of the store's clock."""
    views = manager.shard_views()
    now = manager.store.now()
    statuses = shard_statuses(manager.master, views, now)
    entries = manager.master["shards"]
    per_shard_chunks = [e.get("num_chunks") for e in entries]
    known = all(isinstance(c, int) for c in per_shard_chunks)
    chunks_total = sum(per_shard_chunks) if known else None
    chunks_done = (
        sum(c for c, s in zip(per_shard_chunks, statuses, strict=True) if s["status"] == "completed")
        if known
        else None
    )
    return Snapshot(
        dataset=manager.dataset_dir,
        at=now,
        views=views,
        statuses=statuses,
        halt=manager.halt,
        summary=summarize(statuses, halted=manager.halt is not None),
        records_total=sum(int(e.get("total_tasks") or 0) for e in entries),
        chunks_total=chunks_total,
        chunks_done=chunks_done,
    )
