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
            if new["status"] == "available" and op.startswith("reset"):
                self.epoch[shard_id] += 1
            return
        if op == "claim":
            self._check_claim(actor, shard_id, before, prev, new)
        else:
            self._check_holder_write(actor, op, shard_id, prev)
        self._check_counts(actor, op, shard_id, prev, new)

    def _check_claim(
        self, actor: Worker, shard_id: int, before: StoredObject, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
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

    def _check_holder_write(self, actor: Worker, op: str, shard_id: int, prev: dict[str, Any]) -> None:
        token = (prev.get("lease") or {}).get("token")
        if prev["status"] != "in_use" or token not in actor.tokens:
            self.fail(
                f"fencing: {actor.name} ({op}) wrote shard {shard_id}, which was {prev['status']} "
                f"under lease {str(token)[:6]} not its own"
            )
        if token in actor.told_lost:
            self.fail(f"fencing: {actor.name} ({op}) wrote shard {shard_id} after being told it lost it")

    def _check_counts(
        self, actor: Worker, op: str, shard_id: int, prev: dict[str, Any], new: dict[str, Any]
    ) -> None:
        grew = int(new.get("failures") or 0) - int(prev.get("failures") or 0)
        if grew != (1 if op == "fail" else 0):
            self.fail(f"attempts: {actor.name} ({op}) changed shard {shard_id}'s failures by {grew}")
        if int(new.get("failures") or 0) > MAX_ATTEMPTS:
            self.fail(f"attempts: shard {shard_id} has {new['failures']} failures, budget {MAX_ATTEMPTS}")
        if new["status"] == "completed" and prev["status"] != "completed":
            key = (shard_id, self.epoch[shard_id])
            self.completions[key] += 1
            if self.completions[key] > 1:
                self.fail(f"exactly-once: shard {shard_id} completed twice (by {actor.name} the 2nd time)")


current = Context()
