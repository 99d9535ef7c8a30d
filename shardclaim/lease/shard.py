"""A shard's document and its transitions: pure functions from one document to the next.

The states (``available``, ``in_use``, ``completed``, ``failed``) and who may move a shard between them::

    available --claim--> in_use --complete--> completed
        ^                  |  |--fail (attempts left)--> available
        |                  |  |--fail (budget spent)---> failed
        |                  |  '--release (SIGTERM)-----> available
        |                  '--lease expired: a peer's claim takes it over (in_use again, new token)
        '--reset (operator) from any state

Every function returns a new document; none writes. Writing, and fencing, is
:class:`~shardclaim.lease.fenced.FencedLease`'s job. Expiry is judged on the store's clock only.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import orjson

from shardclaim.layout import MAX_LEASE_SECONDS

__all__ = [
    "Status",
    "check_lease_options",
    "checkpointed",
    "claimed",
    "completed",
    "encode",
    "end_of",
    "expired",
    "failed",
    "lease_expired",
    "poisoned",
    "released",
    "renewed",
    "reset",
]

Status = Literal["available", "in_use", "completed", "failed"]
Doc = dict[str, Any]
_HOST = socket.gethostname()


def check_lease_options(lease_seconds: object, heartbeat_seconds: object) -> tuple[float, float]:
    """A lease length and heartbeat interval as given by a user, checked; the heartbeat defaults to a
    quarter of the lease (at least 10 s for leases of 40 s and more)."""
    if not isinstance(lease_seconds, int | float) or isinstance(lease_seconds, bool):
        msg = f"lease_seconds must be a number, got {lease_seconds!r}"
        raise ValueError(msg)
    if not 0 < lease_seconds <= MAX_LEASE_SECONDS:  # also refuses NaN
        msg = f"lease_seconds must be a number in (0, {MAX_LEASE_SECONDS:.0f}], got {lease_seconds!r}"
        raise ValueError(msg)
    if heartbeat_seconds is None:
        heartbeat_seconds = max(lease_seconds / 4, 10.0) if lease_seconds >= 40 else lease_seconds / 4
    if not isinstance(heartbeat_seconds, int | float) or not 0 < heartbeat_seconds < lease_seconds:
        msg = f"heartbeat_seconds must be in (0, lease_seconds), got {heartbeat_seconds!r}"
        raise ValueError(msg)
    return float(lease_seconds), float(heartbeat_seconds)


def lease_expired(updated: datetime, now: datetime, lease_seconds: float) -> bool:
    """Expired on the store's clock: the last write is more than ``lease_seconds`` before ``now``.

    Compared as float seconds, so that no lease length, however absurd, can overflow a timedelta.
    """
    return bool((now - updated).total_seconds() > lease_seconds) or math.isnan(lease_seconds)


#: Attempts a shard remembers (the last ones).
MAX_HISTORY = 20


def history(
    doc: Mapping[str, Any], outcome: str, when: datetime | None, error: str | None = None
) -> list[Any]:
    """The shard's attempts with the current one (if the shard is held) closed as ``outcome``: worker,
    host, started, ended (store clock), duration, chunks done, and the first line of an error."""
    attempts = list(doc.get("attempts") or [])
    if doc.get("status") != "in_use":
        return attempts
    lease = doc.get("lease") or {}
    started = doc.get("started_at")
    entry: dict[str, Any] = {
        "attempt": doc.get("attempt"),
        "worker": lease.get("worker") or doc.get("assigned_to"),
        "host": lease.get("host"),
        "started": started,
        "ended": when.isoformat() if when is not None else None,
        "outcome": outcome,
        "chunks_done": int(doc.get("resume_chunk") or 0),
    }
    if when is not None and isinstance(started, str):
        with contextlib.suppress(ValueError):
            entry["duration_s"] = round(max(0.0, (when - datetime.fromisoformat(started)).total_seconds()), 3)
    if error:
        entry["error"] = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return [*attempts, entry][-MAX_HISTORY:]


def claimed(
    doc: Mapping[str, Any], *, worker: str, token: str, lease_seconds: float, started_at: datetime,
    reclaimed_from: str | None, adoptable: bool = False,
) -> Doc:  # fmt: skip
    """``adoptable``: a claim that another process may settle for its holder (the seed's CLI claims
    in one process and completes in another); a worker's claim, renewed by its heartbeat, is not."""
    lease: dict[str, Any] = {"token": token, "worker": worker, "host": _HOST, "lease_seconds": lease_seconds}
    if adoptable:
        lease["adoptable"] = True
    new = {
        **{k: v for k, v in doc.items() if k != "reserved_chunk"},  # a new holder splittable once it reserves
        "status": "in_use",
        "assigned_to": worker,
        "started_at": started_at.isoformat(),
        "completed_at": None,
        "attempt": int(doc.get("attempt") or 0) + 1,
        "lease": lease,
    }
    if reclaimed_from is not None:
        new.update(expired(doc))
        new["reclaimed_from"] = reclaimed_from
        new["attempts"] = history(doc, "expired", started_at)
    return new


def expired(doc: Mapping[str, Any]) -> Doc:
    """The counts an expired lease adds: ``expired_leases`` in all, and ``expiries_without_progress``
    — started again when the shard's checkpoint advanced since the last expiry (a holder being
    preempted keeps making progress; a shard that kills its holder does not)."""
    progress = int(doc.get("resume_chunk") or 0)
    advanced = progress > int(doc.get("progress_at_expiry") or 0)
    return {
        "expired_leases": int(doc.get("expired_leases") or 0) + 1,
        "expiries_without_progress": 1 if advanced else int(doc.get("expiries_without_progress") or 0) + 1,
        "progress_at_expiry": progress,
    }


def poisoned(doc: Mapping[str, Any], max_expiries: int, when: datetime | None = None) -> Doc | None:
    """A shard whose holder vanished without releasing it ``max_expiries`` times in a row with no
    progress is ``failed`` with that reason (it is likely what kills its workers); None otherwise."""
    counts = expired(doc)
    if counts["expiries_without_progress"] < max_expiries:
        return None
    return {
        **doc,
        **counts,
        "attempts": history(doc, "expired", when),
        "status": "failed",
        "assigned_to": None,
        "lease": None,
        "last_error": f"its holder died {counts['expiries_without_progress']} times without progress "
        "(the lease expired each time; a release by SIGTERM does not count)",
    }


def renewed(doc: Doc) -> Doc:
    return {**doc, "heartbeats": int(doc.get("heartbeats") or 0) + 1}


def checkpointed(doc: Doc, chunks_done: int) -> Doc:
    """Chunks before ``chunks_done`` are done. A value outside the holder's chunks (the shard's, or its
    part's ``[start, end]``) is refused: written, it would skip chunks nobody processed."""
    start = int(doc.get("start") or 0)
    end = int(doc["end"]) if doc.get("end") is not None else len(doc.get("chunks") or []) or None
    if type(chunks_done) is not int or chunks_done < start or (end is not None and chunks_done > end):
        msg = f"chunks_done must be a whole number in [{start}, {end}], got {chunks_done!r}"
        raise ValueError(msg)
    return {**doc, "resume_chunk": chunks_done}


def completed(doc: Doc, when: datetime) -> Doc:
    attempts = history(doc, "completed", when)
    return {
        **doc,
        "status": "completed",
        "completed_at": when.isoformat(),
        "lease": None,
        "attempts": attempts,
    }


def failed(doc: Doc, error: str | None, max_attempts: int, when: datetime | None = None) -> Doc:
    """Spend one attempt: back to ``available``, or ``failed`` once ``max_attempts`` are spent."""
    failures = int(doc.get("failures") or 0) + 1
    outcome = "timed out" if error and str(error).startswith("timed out") else "failed"
    return {
        **doc,
        "attempts": history(doc, outcome, when, error),
        "status": "failed" if failures >= max_attempts else "available",
        "failures": failures,
        "last_error": None if error is None else str(error)[-4000:],
        "assigned_to": None,
        "lease": None,
    }


def released(doc: Doc, when: datetime | None = None, *, cannot_start: bool = False) -> Doc:
    """Give the shard back without spending an attempt (preemption, shutdown); ``cannot_start``: the
    command could not start on the holder's machine, counted in ``cannot_start`` (a bounded count)."""
    if cannot_start:
        attempts = history(doc, "cannot start", when)
        more = {"cannot_start": int(doc.get("cannot_start") or 0) + 1}
    else:
        attempts, more = history(doc, "released", when), {}
    return {**doc, "status": "available", "assigned_to": None, "lease": None, "attempts": attempts, **more}


def reset(doc: Mapping[str, Any], when: datetime | None = None) -> Doc:
    """Operator action: available, with a fresh retry budget and no checkpoint; a split shard is whole
    again (its parts' attempts join the shard's own history; their holders are fenced)."""
    parts = doc.get("ranges") or []
    attempts = list(doc.get("attempts") or []) if parts else history(doc, "lost (reset by an operator)", when)
    for part in parts:
        attempts += history(part, "lost (reset by an operator)", when)
    whole = {k: v for k, v in doc.items() if k not in ("ranges", "reserved_chunk", "end")}
    return {
        **whole,
        "attempts": attempts[-MAX_HISTORY:],
        "status": "available",
        "assigned_to": None,
        "completed_at": None,
        "lease": None,
        "failures": 0,
        "resume_chunk": 0,
        "expiries_without_progress": 0,
        "progress_at_expiry": 0,
        "cannot_start": 0,
    }


def encode(doc: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The document's bytes, and the object metadata that caches what a listing needs to know.

    The cache holds ``status``, ``holder``, ``attempt``, ``failures``, the lease's ``token`` and
    ``lease-seconds``, the ``compute-s`` of ended attempts and, for a shard not completed whose checkpoint
    is past its first chunk, ``records-done`` (the records of its checkpointed chunks: a progress display
    counts work in flight from one listing). It is only a cache: where it is missing or garbled, the
    document is read.
    """
    lease = doc.get("lease") or {}
    parts = doc.get("ranges") or []
    meta = {
        "status": str(doc["status"]),
        "attempt": str(doc.get("attempt") or 0),
        "failures": str(doc.get("failures") or 0),
    }
    if doc.get("assigned_to"):
        meta["holder"] = _ascii(str(doc["assigned_to"]))
    if lease.get("token"):
        meta["token"] = _ascii(str(lease["token"]))
        meta["lease-seconds"] = repr(float(lease["lease_seconds"]))
    compute = sum(
        float(a.get("duration_s") or 0)
        for holder in (doc, *parts)
        for a in holder.get("attempts") or []
        if isinstance(a, dict)
    )
    if compute:
        meta["compute-s"] = f"{compute:.3f}"
    if doc["status"] != "completed" and (done := records_checkpointed(doc)):
        meta["records-done"] = str(done)
    num_chunks = len(doc.get("chunks") or [])
    steal = max((hi - lo for lo, hi in (untouched(p, num_chunks) for p in parts or [doc])), default=0)
    if steal > 0:
        meta["steal"] = str(steal)  # untouched chunks an idle worker may take (lease.ranges)
    if parts:  # a split shard: its parts' leases are judged on their renewed_at, not the object's time
        held = [p for p in parts if p.get("status") == "in_use"]
        meta["parts"] = str(len(parts))
        if held:
            meta["renewed-min"] = _ascii(min(str(p.get("renewed_at") or "") for p in held) or "-")
            meta["lease-seconds"] = repr(min(float((p.get("lease") or {}).get("lease_seconds", 0) or 0)
                                              for p in held) or 60.0)  # fmt: skip
        if any(p.get("status") == "available" for p in parts):
            meta["open"] = "1"
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2), meta


def untouched(part: Mapping[str, Any], num_chunks: int) -> tuple[int, int]:
    """``(lo, hi)``: the chunks of a shard (or of a part of a split one) in use that nobody has started
    or reserved (none when lo >= hi). A holder that never reserved is never split: (0, 0)."""
    if part.get("status") != "in_use" or "reserved_chunk" not in part:
        return 0, 0
    lo = max(int(part.get("resume_chunk") or 0), int(part["reserved_chunk"]))
    return lo, end_of(part, num_chunks)


def end_of(part: Mapping[str, Any], num_chunks: int) -> int:
    """Where a holder's chunks end: its part's ``end``, or the shard's last chunk for a whole shard."""
    end = part.get("end")
    return int(end) if end is not None else num_chunks


def records_checkpointed(doc: Mapping[str, Any]) -> int:
    """The records of the chunks the shard's checkpoint says are done (0 when it has none); for a split
    shard, those of its completed parts and of its parts' checkpoints."""
    chunks = doc.get("chunks") or []

    def count(lo: int, hi: int) -> int:
        return sum(int(c.get("num_tasks") or 0) for c in chunks[lo:hi] if isinstance(c, dict))

    parts = doc.get("ranges") or []
    if not parts:
        return count(0, int(doc.get("resume_chunk") or 0))
    done = 0
    for p in parts:
        start = int(p.get("start") or 0)
        stop = int(p.get("end") or 0) if p.get("status") == "completed" else int(p.get("resume_chunk") or 0)
        done += count(start, max(start, stop))
    return done


def _ascii(text: str) -> str:
    cleaned = "".join(c if 0x21 <= ord(c) <= 0x7E else "_" for c in text)
    return cleaned[:200] or "_"
