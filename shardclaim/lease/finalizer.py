"""The fan-in marker, ``_finalize.json``: its document, and the digest of the settled state it is for.

The marker is leased like a shard (:class:`~shardclaim.lease.fenced.FencedLease`): the worker that runs
the finalizer holds it and renews it; a successor takes it over only once that lease expired on the
store's clock, and the old holder's next write is refused. Its ``status``:

* ``running`` — a worker holds the lease and runs the finalizer;
* ``done`` / ``failed`` — the finalizer finished (``failed``: with its exit code and error tail) for the
  settled state named by ``settled``;
* ``reset`` — an operator cleared it (``shardclaim reset DATASET --finalizer``): run it again.

``settled`` is a digest of every shard's status and generation. A settled state that differs from the
marker's (a shard was reset and re-run) re-arms the finalizer, whatever the marker says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from shardclaim.lease.views import ShardView

__all__ = ["FINALIZE_KEY", "encode", "settled_digest"]

FINALIZE_KEY = "_finalize.json"
MARKER_STATUSES = frozenset({"running", "done", "failed", "reset"})


def settled_digest(views: Iterable[ShardView]) -> str:
    """Names one settled state of the shards: any write to any shard since gives another digest."""
    h = hashlib.sha256()
    for v in views:
        h.update(f"{v.shard_id}:{v.status}:{v.generation}\n".encode())
    return h.hexdigest()[:32]


def running(
    *, worker: str, token: str, lease_seconds: float, digest: str, summary: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "status": "running",
        "worker": worker,
        "lease": {"token": token, "worker": worker, "lease_seconds": lease_seconds},
        "settled": digest,
        "summary": dict(summary),
        "started_at": now.isoformat(),
    }


def encode(doc: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2), {"status": str(doc.get("status"))}
