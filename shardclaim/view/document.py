"""The job as one JSON document: what ``shardclaim status --json`` prints, and what the HTML report is
drawn from. A documented interface (README, "status --json"): keys are only ever added within a
``schema_version``; a change of meaning gets a new version.

Cost for N shards: the master (one read, when the manager opens the dataset), one listing (on GCS one
request per 1,000 shards), one read of the store's clock, one read of the finalizer's marker and one
read of each shard's document, ``workers`` (16) in flight: N + 4 requests in all.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from shardclaim.errors import ShardclaimError
from shardclaim.idranges import compact
from shardclaim.view.snapshot import Snapshot, take

if TYPE_CHECKING:
    from shardclaim.manager import ShardManager

__all__ = ["SCHEMA_VERSION", "job_document", "read_documents"]

SCHEMA_VERSION = 1
#: Document keys copied into each shard's entry (absent ones as null; ``attempts``, ``ranges`` as []).
_FROM_DOCUMENT = ("num_chunks", "started_at", "completed_at", "resume_chunk", "last_error")


def _public(part: Any) -> Any:
    """A range as its document records it, without the write and lease tokens (a fencing token says
    nothing to a reader, and a report may be mailed)."""
    if not isinstance(part, dict):
        return part
    out = {k: v for k, v in part.items() if k != "write_token"}
    if isinstance(out.get("lease"), dict):
        out["lease"] = {k: v for k, v in out["lease"].items() if k != "token"}
    return out


def read_documents(
    manager: ShardManager, statuses: Sequence[Any], *, workers: int = 16
) -> list[dict[str, Any] | str | None]:
    """Every shard's document, ``workers`` reads in flight: a dict; or None for a shard the listing
    found missing or invalid (not read); or the reason its document could not be read now."""

    def read(entry: Any) -> dict[str, Any] | str | None:
        if entry["status"] in ("missing", "invalid"):
            return None
        try:
            return manager.read_shard(entry["shard_id"])
        except ShardclaimError as e:  # deleted or corrupted since the listing
            return str(e)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, statuses))


def job_document(
    manager: ShardManager, *, workers: int = 16, snapshot: Snapshot | None = None
) -> dict[str, Any]:
    """The job as ``status --json`` prints it (schema :data:`SCHEMA_VERSION`)."""
    snap = snapshot if snapshot is not None else take(manager)
    docs = read_documents(manager, snap.statuses, workers=workers)
    shards = []
    for entry, view, doc in zip(snap.statuses, snap.views, docs, strict=True):
        shard: dict[str, Any] = dict(entry)
        shard["updated_at"] = view.updated.isoformat() if view.updated is not None else None
        found = doc if isinstance(doc, dict) else {}
        for key in _FROM_DOCUMENT:
            shard[key] = found.get(key)
        shard["attempts"] = list(found.get("attempts") or [])
        # Chunk ranges of a split shard (work stealing, issue 12): [] for a shard that was never split.
        shard["ranges"] = [_public(r) for r in found.get("ranges") or []]
        if isinstance(doc, str):
            shard["document_error"] = doc
        shards.append(shard)
    summary = dict(snap.summary)
    summary.update(
        records_total=snap.records_total,
        chunks_done=snap.chunks_done,
        chunks_total=snap.chunks_total,
        ids={state: compact(found) for state, found in snap.ids.items()},
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": snap.dataset,
        "generated_at": snap.at.isoformat(),
        "summary": summary,
        "halt": snap.halt,
        "finalizer": manager.finalizer_status(),
        "shards": shards,
    }
