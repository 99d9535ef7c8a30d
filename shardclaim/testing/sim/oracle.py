"""The simulation's oracle: the shared store that checks every accepted write against the invariants,
the virtual workers it judges, and the constants of a schedule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from shardclaim.errors import ShardclaimError
from shardclaim.fanin import FINALIZE_KEY
from shardclaim.manager import ShardManager
from shardclaim.store.base import Generation, ObjectInfo, Store, StoredObject
from shardclaim.testing import FakeClock

__all__ = [
    "HEARTBEAT",
    "LEASE",
    "MAX_ATTEMPTS",
    "MAX_EXPIRIES",
    "Context",
    "Oracle",
    "Violation",
    "Worker",
    "current",
]

LEASE = 60.0
HEARTBEAT = 15.0
MAX_ATTEMPTS = 3
MAX_EXPIRIES = 3


class Violation(AssertionError):
    """An invariant broke; ``seed`` replays the schedule, ``trace`` tells it step by step."""

    def __init__(self, seed: int, message: str, trace: list[str]) -> None:
        self.seed = seed
        self.message = message
        self.trace = trace
        super().__init__(f"seed {seed}: {message}")

    def report(self) -> str:
        return f"VIOLATION (seed {self.seed}): {self.message}\n" + "\n".join(self.trace[-60:])


@dataclass
class Worker:
    name: str
    worker_id: str
    manager: ShardManager
    skew: float  # what this worker's own clock is off by (only a mutation would read it)
    holding: dict[int, str] = field(default_factory=dict)  # shard -> the lease token it holds it by
    cursor: dict[int, int] = field(default_factory=dict)  # shard -> the next chunk it would work on
    stealer: bool = False  # claims parts of shards and steals (claims(steal=True), run)
    tokens: set[str] = field(default_factory=set)  # lease tokens of its accepted claims
    told_lost: set[str] = field(default_factory=set)
    paused_until: float = 0.0
    dead: bool = False


@dataclass
class Context:
    actor: Worker | None = None  # None: the operator
    op: str = ""


class Oracle:
    """The shared store; checks every accepted write against the invariants."""

    def __init__(self, inner: Store, clock: FakeClock, fail: Callable[[str], None]) -> None:
        self.inner = inner
        self.clock = clock
        self.fail = fail
        self.context = Context()
        self.epoch: Counter[int] = Counter()  # operator resets per shard
        self.completions: Counter[tuple[int, int]] = Counter()
        self.committed: dict[int, dict[int, str]] = {}  # shard -> chunk -> the lease token that committed it
        self.finalizer_epoch = 0  # operator resets of the finalizer

    @property
    def url(self) -> str:
        return self.inner.url

    def read(self, key: str) -> StoredObject:
        return self.inner.read(key)

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        return self.inner.list(prefix, suffix=suffix)

    def now(self) -> datetime:
        return self.inner.now()

    def write(
        self, key: str, data: bytes, *, if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:  # fmt: skip
        try:
            before = self.inner.read(key)
        except ShardclaimError:
            before = None
        info = self.inner.write(key, data, if_generation_match=if_generation_match, metadata=metadata)
        if key == FINALIZE_KEY and orjson.loads(data).get("status") == "reset":
            self.finalizer_epoch += 1  # counted on the write: a reset whose answer was lost counts too
        if key.startswith("shard_") and before is not None:
            self._check_shard(int(key[6:].partition("/")[0]), before, orjson.loads(data))
        return info

    def _check_shard(self, shard_id: int, before: StoredObject, new: dict[str, Any]) -> None:
        prev = orjson.loads(before.data)
        actor, op = self.context.actor, self.context.op
        if actor is None:
            if new["status"] == "available" and op.startswith("reset") and "ranges" not in new:
                self.epoch[shard_id] += 1
                self.committed.pop(shard_id, None)
            elif op == "reset-stale":  # expired parts start over: their chunks will be done again
                for old, part in zip(_parts(prev), _parts(new), strict=True):
                    for chunk in range(int(part.get("resume_chunk") or 0), int(old.get("resume_chunk") or 0)):
                        self.committed.get(shard_id, {}).pop(chunk, None)
            return
        if op in ("claim", "steal"):
            self._check_claim(actor, op, shard_id, before, prev, new)
        else:
            self._check_holder_write(actor, op, shard_id, prev)
            self._check_commits(actor, op, shard_id, prev, new)
        self._check_counts(actor, op, shard_id, prev, new)

    def _check_claim(  # noqa: PLR0917
        self, actor: Worker, op: str, shard_id: int, before: StoredObject, prev: dict[str, Any],
        new: dict[str, Any],
    ) -> None:  # fmt: skip
        if "ranges" in new:
            self._check_part_claim(actor, op, shard_id, prev, new)
            return
        lease = prev.get("lease") or {}
        age = (self.now() - before.updated).total_seconds()
        if prev["status"] == "in_use" and age <= float(lease.get("lease_seconds", LEASE)):
            self.fail(f"claim: {actor.name} took shard {shard_id} over a lease live for {age:.1f} s")
        elif prev["status"] not in ("available", "in_use"):
            self.fail(f"claim: {actor.name} claimed shard {shard_id}, which was {prev['status']}")
        if new["status"] == "failed":  # a poison shard: its holders kept dying without progress
            if int(new.get("expiries_without_progress") or 0) < MAX_EXPIRIES:
                self.fail(f"poison: {actor.name} failed shard {shard_id} before the expiry budget")
        else:
            actor.tokens.add(new["lease"]["token"])

    def _check_part_claim(
        self, actor: Worker, op: str, shard_id: int, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
        old_tokens = {_token(p) for p in _parts(prev)}
        fresh = [p for p in _parts(new) if p.get("status") == "in_use" and _token(p) not in old_tokens]
        if not fresh:  # a part whose holders kept dying without progress, failed by a claimant
            if not any(int(p.get("expiries_without_progress") or 0) >= MAX_EXPIRIES for p in _parts(new)
                       if p.get("status") == "failed"):  # fmt: skip
                self.fail(f"poison: {actor.name} failed a part of shard {shard_id} before the expiry budget")
            return
        (part,) = fresh
        start, end = int(part["start"]), int(part["end"])
        resume = int(part.get("resume_chunk") or start)  # chunks before it were done by earlier holders
        taken = [c for c in range(resume, end) if c in self.committed.get(shard_id, {})]
        if taken:
            self.fail(f"{op}: {actor.name} took chunks {taken} of shard {shard_id}, committed already")
        was = next(p for p in _parts(prev) if int(p.get("start") or 0) <= start < _end(p, new))
        if op == "steal":
            lo = max(int(was.get("resume_chunk") or 0), int(was.get("reserved_chunk", 1 << 30)))
            if was.get("status") != "in_use" or start < lo:
                self.fail(
                    f"steal: {actor.name} took chunks from {start} of shard {shard_id}, but its holder had "
                    f"reserved or done up to {lo} ({was.get('status')})"
                )
        elif was.get("status") == "in_use" and not self._part_expired(was):
            self.fail(f"claim: {actor.name} took part {start}-{end} of shard {shard_id} from a live lease")
        elif was.get("status") not in ("available", "in_use"):
            self.fail(
                f"claim: {actor.name} claimed part {start}-{end} of shard {shard_id}: {was.get('status')}"
            )
        actor.tokens.add(str(_token(part)))

    def _part_expired(self, part: Mapping[str, Any]) -> bool:
        """Judged here, on the store's clock, not by the code under test (a mutation may change it)."""
        held_for = float((part.get("lease") or {}).get("lease_seconds", LEASE))
        age = (self.now() - datetime.fromisoformat(str(part["renewed_at"]))).total_seconds()
        return age > held_for

    def _check_holder_write(self, actor: Worker, op: str, shard_id: int, prev: dict[str, Any]) -> None:
        if not any(_owns(prev, t) for t in actor.tokens):
            self.fail(
                f"fencing: {actor.name} ({op}) wrote shard {shard_id}, which was {prev['status']} "
                "under no lease of its own"
            )
        if any(_owns(prev, t) for t in actor.told_lost):
            self.fail(f"fencing: {actor.name} ({op}) wrote shard {shard_id} after being told it lost it")

    def _check_commits(
        self, actor: Worker, op: str, shard_id: int, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
        """Every chunk is committed (passed by a holder's checkpoint, or in a part it completed) once per
        epoch of the shard, by one lease."""
        mine = [
            i for i, p in enumerate(_parts(prev)) if p.get("status") == "in_use" and _token(p) in actor.tokens
        ]
        if len(_parts(prev)) != len(_parts(new)):
            self.fail(f"{op}: {actor.name} changed the parts of shard {shard_id}")
        done = self.committed.setdefault(shard_id, {})
        for i in mine:
            old, part = _parts(prev)[i], _parts(new)[i]
            lo = int(old.get("resume_chunk") or old.get("start") or 0)
            hi = _end(part, new) if part.get("status") == "completed" else int(part.get("resume_chunk") or 0)
            token = str(_token(old))
            for chunk in range(lo, hi):
                if done.get(chunk, token) != token:
                    self.fail(
                        f"exactly-once: chunk {chunk} of shard {shard_id} committed by two leases ({op})"
                    )
                done[chunk] = token

    def _check_counts(
        self, actor: Worker, op: str, shard_id: int, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
        grew = _failures(new) - _failures(prev)
        if grew != (1 if op == "fail" else 0):
            self.fail(f"attempts: {actor.name} ({op}) changed shard {shard_id}'s failures by {grew}")
        if max(int(p.get("failures") or 0) for p in _parts(new)) > MAX_ATTEMPTS:
            self.fail(f"attempts: shard {shard_id} has a part past its budget of {MAX_ATTEMPTS} failures")
        if new["status"] == "completed" and prev["status"] != "completed":
            key = (shard_id, self.epoch[shard_id])
            self.completions[key] += 1
            if self.completions[key] > 1:
                self.fail(f"exactly-once: shard {shard_id} completed twice (by {actor.name} the 2nd time)")


current = Context()


def _parts(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(doc["ranges"]) if doc.get("ranges") else [dict(doc)]


def _token(part: Mapping[str, Any]) -> object:
    return (part.get("lease") or {}).get("token")


def _end(part: Mapping[str, Any], doc: Mapping[str, Any]) -> int:
    end = part.get("end")
    return int(end) if end is not None else len(doc["chunks"])


def _owns(doc: Mapping[str, Any], token: str) -> bool:
    """The fencing rule, as the oracle states it (not the code under test's)."""
    return any(p.get("status") == "in_use" and _token(p) == token for p in _parts(doc))


def _failures(doc: Mapping[str, Any]) -> int:
    return sum(int(p.get("failures") or 0) for p in _parts(doc))
