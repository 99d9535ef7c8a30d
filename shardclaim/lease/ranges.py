"""Chunk ranges: how the untouched tail of a running shard moves to an idle worker (straggler stealing).

A shard document is *whole* — one holder, described by its top-level fields as always — or *split*: its
``ranges`` list the parts it was cut into, in chunk order, together covering every chunk once. A part is a
small document with a shard's own fields (``status``, ``assigned_to``, ``lease``, ``resume_chunk``,
``attempt``, ``failures``, ``attempts`` ...), so every transition of :mod:`shardclaim.lease.shard`
applies to a part unchanged, plus:

* ``start``, ``end``: its chunks, ``[start, end)``; ``resume_chunk`` is its cursor (chunks before it done);
* ``reserved_chunk``: chunks below it may be in work by the holder — a split never takes them. A holder
  that lets itself be split reserves the next chunk(s) before it starts them, in the write that records
  its progress (:func:`reserved`); a holder that never reserves is never split;
* ``renewed_at``: for a split shard, the store's time just before its holder's last write (one clock
  read per write of a part). The object's own update time cannot judge a part's lease once several
  holders write the object.

A split is one compare-and-swap on the shard's document (:func:`split`): the part with the most
untouched chunks ``[max(cursor, reserved), end)`` gives the second half of them to the taker, under the
taker's own lease token. **Fencing survives it by token**: a holder whose conditional write is refused
re-reads the document, and carries on (applying its change to the new document) only if a part still
holds its lease token in use (:func:`owns`); anything that must fence a holder — a reclaim, a reset, a
failure — replaces or removes that token. The top-level ``status`` of a split shard is derived from its
parts (:func:`summarized`): ``completed`` once all are, ``in_use`` while one is held, ``available`` when
one can be claimed and none is held, ``failed`` once all are settled and one failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from shardclaim.lease import shard as transitions

__all__ = [
    "PART_FIELDS",
    "claimable_part",
    "held_by",
    "is_split",
    "owns",
    "part_of",
    "reserved",
    "split",
    "summarized",
    "untouched",
    "with_part",
]

Doc = dict[str, Any]

#: The fields a part carries of a whole shard's when the shard is first split (the holder's part).
PART_FIELDS = (
    "status", "assigned_to", "lease", "started_at", "completed_at", "resume_chunk", "reserved_chunk",
    "attempt", "failures", "heartbeats", "expired_leases", "expiries_without_progress", "progress_at_expiry",
    "cannot_start", "last_error", "reclaimed_from",
)  # fmt: skip


def is_split(doc: Mapping[str, Any]) -> bool:
    return isinstance(doc.get("ranges"), list) and bool(doc["ranges"])


def _token(part: Mapping[str, Any]) -> object:
    return (part.get("lease") or {}).get("token")


def part_of(doc: Mapping[str, Any], token: str) -> int | None:
    """The index of the part of a split shard that ``token`` holds in use, or None."""
    for i, part in enumerate(doc.get("ranges") or []):
        if part.get("status") == "in_use" and _token(part) == token:
            return i
    return None


def owns(doc: Mapping[str, Any], token: str) -> bool:
    """Whether the lease ``token`` still holds (a part of) the shard in use: the fencing rule."""
    if is_split(doc):
        return part_of(doc, token) is not None
    return doc.get("status") == "in_use" and _token(doc) == token


def with_part(
    doc: Doc, token: str, change: Callable[[Doc], Doc], *, written_at: datetime | None = None
) -> Doc:
    """``change`` applied to what ``token`` holds: the whole document, or its part of a split one (then
    stamped ``renewed_at`` = ``written_at``, and the shard's summary recomputed)."""
    if not is_split(doc):
        return change(doc)
    i = part_of(doc, token)
    if i is None:  # not this holder's any more: the caller's write will be refused by the fence
        return doc
    parts = list(doc["ranges"])
    part = change(dict(parts[i]))
    if written_at is not None:
        part["renewed_at"] = written_at.isoformat()
    parts[i] = part
    return summarized({**doc, "ranges": parts}, when=written_at)


def held_by(doc: Doc, worker: str) -> Doc | None:
    """What ``worker`` (a worker id) holds of the shard by the document: the whole document, or the
    part of a split shard it holds in use (None if none)."""
    if not is_split(doc):
        return doc
    return next(
        (p for p in doc["ranges"] if p.get("status") == "in_use" and p.get("assigned_to") == worker), None
    )


untouched = transitions.untouched


def reserved(part: Doc, cursor: int, count: int, num_chunks: int, *, done: bool = False) -> Doc:
    """The holder's write at a chunk boundary: the ``count`` chunks from ``cursor`` on (up to the part's
    end, which a split may have moved) are reserved for it, never less than before. ``done``: the chunks
    before ``cursor`` are also done for good (a checkpoint: a later holder resumes after them) — only
    when their results are durable, which a reservation alone does not say."""
    end = transitions.end_of(part, num_chunks)
    cursor = min(max(int(cursor), int(part.get("resume_chunk") or 0)), end)
    held = min(max(cursor + max(1, int(count)), int(part.get("reserved_chunk") or 0)), end)
    return {**part, "reserved_chunk": held, **({"resume_chunk": cursor} if done else {})}


def _as_part(doc: Mapping[str, Any], num_chunks: int, renewed_at: datetime) -> Doc:
    part = {k: doc[k] for k in PART_FIELDS if k in doc}  # its past attempts stay the shard's own
    part.update(start=0, end=transitions.end_of(doc, num_chunks), attempts=[])
    part["renewed_at"] = renewed_at.isoformat()
    return part


def split(
    doc: Mapping[str, Any],
    *,
    num_chunks: int,
    updated: datetime,
    taker: Callable[[Doc], Doc],
    exclude_token: str | None = None,
) -> tuple[Doc, int] | None:
    """Cut the part with the most untouched chunks: the taker gets the second half of them (at least
    one), as a new part made by ``taker(part)`` (a claim); ``(new document, the taker's part index)``,
    or None when no part has an untouched chunk. ``updated``: the object's update time, the last write
    of a whole shard's holder (its part's ``renewed_at``)."""
    parts = list(doc["ranges"]) if is_split(doc) else [_as_part(doc, num_chunks, updated)]
    best, best_lo, best_hi = None, 0, 0
    for i, part in enumerate(parts):
        if exclude_token is not None and _token(part) == exclude_token:
            continue
        lo, hi = untouched(part, num_chunks)
        if hi - lo > best_hi - best_lo:
            best, best_lo, best_hi = i, lo, hi
    if best is None:
        return None
    cut = best_hi - math.ceil((best_hi - best_lo) / 2)
    victim = {**parts[best], "end": cut}
    fresh: Doc = {"start": cut, "end": best_hi, "resume_chunk": cut, "status": "available", "attempts": []}
    parts[best : best + 1] = [victim, taker(fresh)]  # not splittable before its holder reserves
    new = {k: v for k, v in doc.items() if k not in PART_FIELDS or k in ("status", "started_at")}
    return summarized({**new, "ranges": parts}, when=None), best + 1


def claimable_part(doc: Mapping[str, Any], now: datetime, default_lease: float) -> int | None:
    """A part of a split shard that a claim may take: an available one, else one whose lease expired
    (on its ``renewed_at``)."""
    parts = doc.get("ranges") or []
    for i, part in enumerate(parts):
        if part.get("status") == "available":
            return i
    for i, part in enumerate(parts):
        if part.get("status") == "in_use" and part_expired(part, now, default_lease):
            return i
    return None


def reset_expired(doc: Doc, now: datetime, default_lease: float) -> Doc | None:
    """``reset --stale`` of a split shard: its parts whose leases expired are available again, fresh
    (a budget and no checkpoint of their own); None when no part expired. The live parts stay held."""
    parts = list(doc["ranges"])
    hit = False
    for i, part in enumerate(parts):
        if part.get("status") == "in_use" and part_expired(part, now, default_lease):
            fresh = {k: v for k, v in part.items() if k != "reserved_chunk"}
            fresh.update(
                attempts=transitions.history(part, "lost (reset by an operator)", now), status="available",
                assigned_to=None, lease=None, failures=0, resume_chunk=part["start"],
                expiries_without_progress=0, progress_at_expiry=part["start"],
            )  # fmt: skip
            parts[i] = fresh
            hit = True
    return summarized({**doc, "ranges": parts}, when=now) if hit else None


def part_expired(part: Mapping[str, Any], now: datetime, default_lease: float) -> bool:
    renewed = part.get("renewed_at")
    try:
        when = datetime.fromisoformat(renewed) if isinstance(renewed, str) else None
    except ValueError:
        when = None
    held_for = float((part.get("lease") or {}).get("lease_seconds", default_lease))
    if when is None or (when - now).total_seconds() > held_for:
        return (
            True  # never renewed by a live holder, or "renewed" further ahead than a lease: not a store time
        )
    return transitions.lease_expired(when, now, held_for)


def summarized(doc: Doc, *, when: datetime | None) -> Doc:
    """A split shard's top-level fields, derived from its parts."""
    parts = doc["ranges"]
    states = [p.get("status") for p in parts]
    if all(s == "completed" for s in states):
        status = "completed"
    elif "in_use" in states:
        status = "in_use"
    elif "available" in states:
        status = "available"
    else:
        status = "failed"
    holders = [p.get("assigned_to") for p in parts if p.get("status") == "in_use"]
    out = {
        **doc,
        "status": status,
        "assigned_to": holders[0] if holders else None,
        "lease": None,
        "attempt": max(int(p.get("attempt") or 0) for p in parts),
        "failures": max(int(p.get("failures") or 0) for p in parts),
    }
    if status == "completed" and not doc.get("completed_at"):
        out["completed_at"] = when.isoformat() if when is not None else None
    if status == "failed":
        errors = [p.get("last_error") for p in parts if p.get("status") == "failed" and p.get("last_error")]
        out["last_error"] = errors[0] if errors else doc.get("last_error")
    return out
